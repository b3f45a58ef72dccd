"""The private Ray API the study uses (a restored Tuner's callbacks and scheduler), against the installed
Ray."""

from __future__ import annotations

import pytest
from ray import tune

from cytotune.study.runner import restored_callbacks


class Marker(tune.Callback):
    pass


def test_a_tuner_takes_the_launch_s_callbacks(tmp_path):
    tuner = tune.Tuner(lambda config: None, run_config=tune.RunConfig(storage_path=str(tmp_path), name="x"))
    marker = Marker()
    restored_callbacks(tuner, [marker])
    assert tuner._local_tuner.get_run_config().callbacks == [marker]


def test_a_ray_without_it_fails_loudly():
    with pytest.raises(RuntimeError, match=r"Tuner._local_tuner._run_config.callbacks is gone"):
        restored_callbacks(object(), [Marker()])


def test_a_restored_tuner_gives_its_scheduler_for_the_kept_rungs():
    from ray.tune.schedulers import FIFOScheduler

    from cytotune.study.runner import restored_scheduler

    scheduler = FIFOScheduler()
    tuner = tune.Tuner(lambda config: None, tune_config=tune.TuneConfig(scheduler=scheduler))
    assert restored_scheduler(tuner) is scheduler
    with pytest.raises(RuntimeError, match=r"Tuner._local_tuner._tune_config.scheduler is gone"):
        restored_scheduler(object())
