"""`cytotune bench scale` on a tiny cut of Experiment 2: one MLflow run per planned trial, every metric step
Ray Tune received is in MLflow, each run's steps are the schedule's own evaluation steps, and trials save
checkpoints by the study's clock."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from mlflow import MlflowClient

from cytotune.bench.scale import bench_scale, table
from cytotune.bench.servers import tracking_server
from cytotune.tracking import schema
from cytotune.tracking.runs import search_all

EXP2 = Path(__file__).resolve().parents[1] / "search_spaces" / "exp2_lora_fewshot.yaml"


@pytest.mark.slow
def test_bench_scale_counts_one_run_per_trial_and_every_metric(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    with tracking_server(tmp_path, workers=1) as server:
        figures = bench_scale(
            EXP2, tmp_path / "work", server.uri, slots=8, seconds=0.2, trials=20, queries=False, say=print
        )
        runs = search_all(MlflowClient(server.uri), figures.study, f"tags.`{schema.KIND}` = 'trial'")
        client = MlflowClient(server.uri)
        steps = {
            run.info.run_id: sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_acc"))
            for run in runs
        }
    # cut to at most 20 trials: 1 backbone x 1 dataset x shots 1 x 5 lr x 3 seeds = 15
    assert figures.trials == 15 and figures.runs == 15 and len(runs) == 15
    assert figures.duplicates == 0 and figures.trials_without_run == 0 and figures.lost_steps == 0
    assert sum(figures.driver.counts.values()) == 15 and figures.driver.counts["failed"] == 0
    # shots 1: 50 + 100 steps, evaluated every 50; seed-grouped ASHA (grace 100) stops some before the end
    for run in runs:
        status, logged = run.data.tags[schema.STATUS], steps[run.info.run_id]
        assert status in (schema.FINISHED, schema.STOPPED)
        if status == schema.FINISHED:
            assert logged == [50, 100, 150], run.data.tags[schema.TRIAL_KEY]
        else:
            assert logged in ([50], [50, 100]), run.data.tags[schema.TRIAL_KEY]
    # the trainable logs a step once Tune took its report; a stopped trial's last report never returns
    assert figures.metric_steps <= sum(len(s) for s in steps.values())
    assert figures.metric_steps >= 3 * figures.driver.counts["finished"]
    # the checkpoint clock (60 s) never fires in a 0.2 s trial: finished trials hold their final checkpoint
    # only, stopped ones none
    experiment = tmp_path / "work" / "ray_results" / figures.study
    checkpoints = sorted(p.name for p in experiment.glob("trial_*/checkpoint_*"))
    assert checkpoints == ["checkpoint_000000"] * figures.driver.counts["finished"]
    assert figures.driver.mlflow_calls > 0
    # each of a trial's 3 evaluations is a third of its 0.2 s
    assert figures.simulated_s == pytest.approx(figures.metric_steps * 0.2 / 3, rel=1e-12)
    assert "duplicate runs" in table([figures])


@pytest.mark.slow
def test_a_killed_driver_resumes_without_training_again_a_trial_whose_end_it_recorded(tmp_path, monkeypatch):
    """Ray Tune snapshots the experiment at the start only here, so every trial that ended before the kill
    ended after the snapshot: Tune starts it again on resume, and it must report its recorded end, whether
    MLflow held it at the kill or only the driver's end journal did."""
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "3600")
    with tracking_server(tmp_path, workers=1) as server:
        figures = bench_scale(
            EXP2,
            tmp_path / "work",
            server.uri,
            slots=8,
            seconds=0.5,
            trials=30,
            fault="driver-kill",
            queries=False,
            say=print,
        )
        runs = search_all(MlflowClient(server.uri), figures.study, f"tags.`{schema.KIND}` = 'trial'")
    assert figures.launches == 2 and figures.trials == 30
    assert (figures.runs, figures.duplicates, figures.trials_without_run) == (30, 0, 0)
    # lost steps are not asserted: what a killed attempt reported after Tune's snapshot died with the driver,
    # and its re-run may stop earlier (a sibling seed replayed as stopped stops it at its first report)
    assert figures.recorded_ended + figures.journaled_ended >= 5 and figures.recorded_rerun == 0
    # the resumed launch's outcome (replayed trials included) says what MLflow says of every trial
    statuses = Counter(run.data.tags[schema.STATUS] for run in runs)
    assert {name: n for name, n in figures.driver.counts.items() if n} == dict(statuses)
    assert set(statuses) <= {schema.FINISHED, schema.STOPPED}
    # the ideal time counts every finished trial's whole 0.5 s, replayed ones too
    assert figures.simulated_s >= figures.driver.counts["finished"] * 0.5 - 1e-9
