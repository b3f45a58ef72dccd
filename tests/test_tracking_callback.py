"""MlflowCallback's run layout in the embedded SQLite store, resume, and the best-config query."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow import MlflowClient
from tracking_fakes import check_layout, default_outcome, launch_callback, plans, run_fake_study, write_study

from cytotune.errors import CytotuneError
from cytotune.tracking import best_configs, runs_frame, schema, select_best
from cytotune.tracking.uri import default_tracking_uri


def test_default_tracking_uri_is_an_sqlite_file_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_layout_queries_and_selection(tmp_path, mlflow_sqlite_uri):
    uri = mlflow_sqlite_uri
    yaml_path = write_study(tmp_path, "fake-layout")
    study_plans = plans(yaml_path)
    callback = launch_callback(yaml_path, uri, address="local")
    run_fake_study(callback, study_plans, tmp_path / "ckpt")
    check_layout(MlflowClient(uri), "fake-layout", yaml_path, study_plans)

    frame = runs_frame("fake-layout", uri)
    assert len(frame) == len(study_plans)
    assert frame["lr"].dtype.kind == "f" and frame["seed"].dtype.kind == "i"
    assert sorted(frame["status"].value_counts().items()) == [("failed", 1), ("finished", 6), ("stopped", 1)]
    best = best_configs("fake-layout", uri).set_index("cell_key")
    assert best.equals(select_best(frame, ("lr",), expected_seeds=2).set_index("cell_key"))
    probe = best.loc["linear_probe/tiny_clip/synthetic/full"]
    assert probe["lr"] == 1e-3 and probe["n_seeds"] == 2 and not probe["missing_seeds"]
    lora = best.loc["lora/tiny_clip/synthetic/shots=2/rank=2,targets=qv"]
    # lr 1e-3 was stopped on seed 2 and lr 1e-2 failed on it: no configuration finished both seeds
    assert lora["selection"] == "no configuration finished on every seed" and np.isnan(lora["lr"])
    assert lora["n_seeds"] == 0 and lora["missing_seeds"] and np.isnan(lora["test_acc_mean"])
    assert list(runs_frame("fake-layout", uri, where="method=lora,lr=0.01")["seed"]) == [1, 2]
    with pytest.raises(CytotuneError, match="experiment 'nope' not found"):
        runs_frame("nope", uri)


def test_resume_after_an_interrupted_driver_continues_each_trials_run(tmp_path, mlflow_sqlite_uri):
    uri = mlflow_sqlite_uri
    yaml_path = write_study(tmp_path, "fake-resume")
    study_plans = plans(yaml_path)
    first = launch_callback(yaml_path, uri)
    run_fake_study(first, study_plans, tmp_path / "ckpt1", stop_after=5)
    second = launch_callback(yaml_path, uri, resume=True)
    second.setup()
    interrupted = study_plans[4]
    from tracking_fakes import FakeTrial, end, start

    for index, plan in enumerate(study_plans[4:], start=4):
        trial = start(second, plan, f"trial_{index:05d}" if plan is interrupted else f"again_{index:05d}")
        end(second, plan, trial, default_outcome(plan), tmp_path / "ckpt2")
    # Ray's list at the end of a resumed run holds every trial of the study, the earlier launch's too.
    second.on_experiment_end([FakeTrial(p.trial_key, {}, status="TERMINATED") for p in study_plans])

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("fake-resume").experiment_id
    runs = client.search_runs([experiment], max_results=1000)
    children = [r for r in runs if r.data.tags[schema.KIND] == schema.KIND_TRIAL]
    launches = {r.info.run_id: r for r in runs if r.data.tags[schema.KIND] == schema.KIND_LAUNCH}
    assert sorted(r.data.tags[schema.TRIAL_KEY] for r in children) == sorted(p.trial_key for p in study_plans)
    assert any(default_outcome(plan) == "failed" for plan in study_plans[4:])
    assert launches[first.parent_run_id].info.status == "KILLED"
    assert launches[second.parent_run_id].info.status == "FAILED"  # a trial of the second launch failed
    assert launches[first.parent_run_id].data.tags[schema.RESUME] == "false"
    continued = next(r for r in children if r.data.tags[schema.TRIAL_KEY] == interrupted.trial_key)
    assert continued.data.tags[schema.PARENT_RUN_ID] == first.parent_run_id
    assert continued.data.tags[schema.LAUNCHES] == f"{first.parent_run_id},{second.parent_run_id}"
    assert continued.data.tags[schema.STATUS] == "finished" and continued.info.status == "FINISHED"
    history = client.get_metric_history(continued.info.run_id, "val_acc")
    assert sorted(m.step for m in history) == [10, 10, 20, 20]
    assert len(runs_frame("fake-resume", uri)) == len(study_plans)


def test_a_new_launch_without_resume_makes_new_runs_and_queries_keep_the_latest(tmp_path, mlflow_sqlite_uri):
    uri = mlflow_sqlite_uri
    yaml_path = write_study(tmp_path, "fake-again")
    study_plans = plans(yaml_path)[:2]
    for attempt in range(2):
        callback = launch_callback(yaml_path, uri)
        run_fake_study(callback, study_plans, tmp_path / f"ckpt{attempt}")
    frame = runs_frame("fake-again", uri)
    assert len(frame) == 2
    assert set(frame["parent_run_id"]) == {callback.parent_run_id}
    assert len(runs_frame("fake-again", uri, all_launches=True)) == 2
    assert (
        len(
            MlflowClient(uri).search_runs(
                [frame_experiment(uri, "fake-again")], "tags.`cytotune.kind` = 'trial'"
            )
        )
        == 4
    )


def frame_experiment(uri, name):
    return MlflowClient(uri).get_experiment_by_name(name).experiment_id
