"""MlflowCallback's run layout in the embedded SQLite store, resume, and the best-config query."""

from __future__ import annotations

from pathlib import Path

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


def test_where_on_text_and_integer_params_is_searched_by_the_store_and_keeps_what_filtering_all_keeps(
    tmp_path, mlflow_sqlite_uri, monkeypatch
):
    from cytotune.tracking import runs as runs_module

    uri = mlflow_sqlite_uri
    yaml_path = write_study(tmp_path, "fake-where")
    run_fake_study(launch_callback(yaml_path, uri), plans(yaml_path), tmp_path / "ckpt")
    every = runs_frame("fake-where", uri)
    searches: list[tuple[str, int]] = []
    search = runs_module.search_records

    def counted(*args, **kwargs):
        found = search(*args, **kwargs)
        searches.append((args[2], len(found)))
        return found

    monkeypatch.setattr(runs_module, "search_records", counted)
    lora, probe = every["method"] == "lora", every["method"] == "linear_probe"
    qv = every["lora.targets"] == "q,v"
    cases = {  # --where -> the rows a hand-written mask over every run keeps; the clause searched, its rows
        "method=lora": (lora, "params.`method` = 'lora'", lora),
        "method=lora,lr=0.01": (lora & (every["lr"] == 0.01), "params.`method` = 'lora'", lora),
        "lora.targets=q,v": (qv, "params.`lora.targets` = 'q,v'", qv),
        "status=finished,method=linear_probe": (
            (every["status"] == "finished") & probe,
            "params.`method` = 'linear_probe'",
            probe,
        ),
    }
    for where, (mask, clause, searched) in cases.items():
        searches.clear()
        got = runs_frame("fake-where", uri, where)
        assert list(got["trial_key"]) == list(every[mask]["trial_key"]), where
        assert got["test_acc"].equals(every[mask]["test_acc"].reset_index(drop=True)), where
        assert len(searches) == 1 and clause in searches[0][0] and searches[0][1] == searched.sum(), where
    assert 0 < lora.sum() < len(every)

    searches.clear()
    assert list(runs_frame("fake-where", uri, "lr=1e-2,seed=1")["trial_key"]) == list(
        every[(every["lr"] == 0.01) & (every["seed"] == 1)]["trial_key"]
    )
    assert [clause for clause, _ in searches] == ["tags.`cytotune.kind` = 'trial' AND params.`seed` = '1'"]
    for where in ("lr=0.01", "seed=1.5", "train.augment=1"):  # a float, a seed no run has, a bool as 1
        searches.clear()
        runs_frame("fake-where", uri, where)
        assert searches[0][0] == "tags.`cytotune.kind` = 'trial'", where
    assert {"seed", "shots", "level", "lora.rank", "train.batch_size"} <= schema.integer_params()
    assert not {"lr", "fraction", "lora.alpha", "lora.blocks", "train.augment"} & schema.integer_params()

    searches.clear()
    none = runs_frame("fake-where", uri, "method=nope")  # nothing matched: every run read, the columns kept
    assert none.empty and "method" in none.columns and [n for _, n in searches] == [0, len(every)]
    with pytest.raises(CytotuneError, match="no field 'datset' in the runs"):
        runs_frame("fake-where", uri, "datset=synthetic")


def test_best_with_a_config_out_reads_the_runs_once_and_writes_what_a_fresh_read_writes(
    tmp_path, mlflow_sqlite_uri, monkeypatch
):
    from typer.testing import CliRunner

    from cytotune.cli import app
    from cytotune.tracking import runs as runs_module
    from cytotune.tracking.rerun import write_rerun

    uri = mlflow_sqlite_uri
    yaml_path = write_study(tmp_path, "fake-rerun")
    run_fake_study(launch_callback(yaml_path, uri), plans(yaml_path), tmp_path / "ckpt")
    fresh = write_rerun("fake-rerun", tmp_path / "fresh.yaml", uri)
    searches: list[str] = []
    search = runs_module.search_records

    def counted(*args, **kwargs):
        searches.append(args[2])
        return search(*args, **kwargs)

    monkeypatch.setattr(runs_module, "search_records", counted)
    out = tmp_path / "rerun.yaml"
    args = ["best", "--experiment", "fake-rerun", "--tracking-uri", uri, "--format", "json"]
    result = CliRunner().invoke(app, [*args, "--config-out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert searches == ["tags.`cytotune.kind` = 'trial'"]
    assert out.read_text() == fresh.read_text()


def test_a_rerun_whose_chosen_trial_lost_its_config_file_says_which_run_and_writes_nothing(
    tmp_path, mlflow_sqlite_uri
):
    from urllib.parse import urlparse

    from cytotune.tracking.rerun import write_rerun

    uri = mlflow_sqlite_uri
    yaml_path = write_study(tmp_path, "fake-lost")
    run_fake_study(launch_callback(yaml_path, uri), plans(yaml_path), tmp_path / "ckpt")
    frame = runs_frame("fake-lost", uri)
    chosen = best_configs("fake-lost", uri, frame=frame).dropna(subset=["lr"])
    assert len(chosen) == 1  # the linear probe cell (no LoRA configuration finished both seeds)
    cell = chosen.iloc[0]
    picked = frame[(frame["cell_key"] == cell["cell_key"]) & (frame["lr"] == cell["lr"])]
    picked = picked[picked["status"] == "finished"].iloc[0]
    (Path(urlparse(picked["artifact_uri"]).path) / schema.TRIAL_ARTIFACT).unlink()
    with pytest.raises(CytotuneError, match=f"run {picked['run_id']}: cannot read trial_config.json"):
        write_rerun("fake-lost", tmp_path / "rerun.yaml", uri)
    assert not (tmp_path / "rerun.yaml").exists()
