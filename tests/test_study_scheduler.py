"""Per-cell ASHA with scripted results: a trial is compared only with the trials of its own cell."""

from __future__ import annotations

from types import SimpleNamespace

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from cytotune.study.scheduler import PerCellASHA
from cytotune.study.spec import AshaSettings

ASHA = AshaSettings(grace_period=10, reduction_factor=2, max_steps=40)
# val_acc at steps 10, 20, 40 for 4 trials of an easy cell and 4 of a hard cell, best first in each cell
EASY = {f"easy{i}": [0.95 - 0.02 * i, 0.96 - 0.02 * i, 0.97 - 0.02 * i] for i in range(4)}
HARD = {f"hard{i}": [0.45 - 0.05 * i, 0.50 - 0.05 * i, 0.55 - 0.05 * i] for i in range(4)}


def trial(name: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=name, config={"cell_key": name.rstrip("0123456789")})


def play(scheduler) -> dict[str, int]:
    """Feed the scripted results rung by rung (easy cell first); return the step each trial stopped at."""
    trials = {name: trial(name) for name in [*EASY, *HARD]}
    for t in trials.values():
        scheduler.on_trial_add(None, t)
    stopped: dict[str, int] = {}
    for rung, step in enumerate((10, 20, 40)):
        for name, curve in [*EASY.items(), *HARD.items()]:
            if name in stopped:
                continue
            decision = scheduler.on_trial_result(None, trials[name], {"step": step, "val_acc": curve[rung]})
            if decision == TrialScheduler.STOP:
                stopped[name] = step
    return stopped


def test_hard_cell_is_not_stopped_because_of_the_easy_cell():
    stopped = play(PerCellASHA({"easy": ASHA, "hard": ASHA}))
    assert "hard0" not in stopped and "easy0" not in stopped
    assert stopped == {"easy1": 10, "easy2": 10, "easy3": 10, "hard1": 10, "hard2": 10, "hard3": 10}


def test_one_pooled_asha_would_stop_every_hard_trial():
    pooled = AsyncHyperBandScheduler(
        time_attr="step",
        metric="val_acc",
        mode="max",
        max_t=40,
        grace_period=10,
        reduction_factor=2,
        stop_last_trials=False,
    )
    stopped = play(pooled)
    assert set(HARD) <= set(stopped)


def test_cells_without_asha_run_to_the_end():
    scheduler = PerCellASHA({"easy": None, "hard": None})
    assert play(scheduler) == {}


def test_final_step_does_not_stop_a_surviving_trial():
    scheduler = PerCellASHA({"easy": ASHA})
    t = trial("easy0")
    scheduler.on_trial_add(None, t)
    assert scheduler.on_trial_result(None, t, {"step": 40, "val_acc": 0.5}) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, t, {"step": 80, "val_acc": 0.5}) == TrialScheduler.CONTINUE


def test_seeds_keep_their_own_rungs_so_a_lucky_sample_does_not_stop_the_good_lr_of_another_seed():
    # seed 2 drew a harder few-shot sample: its good lr scores below seed 1's bad lr
    curves = {(1, "good"): 0.9, (1, "bad"): 0.8, (2, "good"): 0.7, (2, "bad"): 0.6}
    scheduler = PerCellASHA({"cell": ASHA})
    stopped = set()
    for (seed, lr), acc in curves.items():
        t = SimpleNamespace(trial_id=f"{lr}-{seed}", config={"cell_key": "cell", "trial": {"seed": seed}})
        scheduler.on_trial_add(None, t)
        if scheduler.on_trial_result(None, t, {"step": 10, "val_acc": acc}) == TrialScheduler.STOP:
            stopped.add((seed, lr))
    assert stopped == {(1, "bad"), (2, "bad")}
