"""A resumed study's trials that ended after Ray Tune's last snapshot report their recorded end instead of
training again: what each ended run (and pack) replays, hand-built; the callback leaves replayed runs as they
ended, limited to the study's current launches; a trial's end is never written before its last metrics."""

from __future__ import annotations

import math

from mlflow import MlflowClient
from tracking_fakes import FakeTrial, end, launch_callback, plans, start, val_acc, write_study

from cytotune.study.packs import pack_members
from cytotune.tracking import schema
from cytotune.tracking.callback import _log_batches
from cytotune.tracking.replay import replay_results
from cytotune.tracking.run_records import RunRecord

FINAL = {"best_val_acc": 0.8, "best_step": 40.0, "test_acc": 0.75, "steps": 60.0}


def record(key: str, status: str | None, metrics: dict[str, float], **tags: str) -> RunRecord:
    """A trial (or pack) run as a query reads it."""
    all_tags = {schema.TRIAL_KEY: key, **({schema.STATUS: status} if status else {}), **tags}
    return RunRecord(key, "FINISHED", 1, 2, "", {}, all_tags, dict(metrics))


def test_finished_and_stopped_trials_replay_their_last_metrics_others_train_again():
    runs = {
        "finished": record("finished", "finished", {"train_loss": 0.1, "val_acc": 0.8, **FINAL}),
        "stopped": record("stopped", "stopped", {"train_loss": 0.4, "val_acc": 0.5, "best_val_acc": 0.55}),
        "running": record("running", "running", {"val_acc": 0.7}),
        "failed": record("failed", "failed", {"val_acc": 0.2}),
        "no-eval": record("no-eval", "stopped", {}),
    }
    replays = replay_results(runs, {}, {})
    assert set(replays) == {"finished", "stopped"}
    assert replays["finished"] == {
        "train_loss": 0.1,
        "val_acc": 0.8,
        "best_val_acc": 0.8,
        "best_step": 40.0,
        "test_acc": 0.75,
        "steps": 60.0,
        "step": 60,
        "done_trial": 1,
        "replayed": 1,
    }
    assert replays["stopped"] == {"train_loss": 0.4, "val_acc": 0.5, "best_val_acc": 0.55, "replayed": 1}
    # none of the trials Tune's snapshot holds as ended (Tune starts none of them again)
    assert replay_results(runs, {}, {}, exclude={"finished"}) == {"stopped": replays["stopped"]}


def _pack_config(keys: list[str]) -> dict:
    members = [
        {"trial_key": k, "cell_key": "c", "trial": None, "searched": {"lr": i}} for i, k in enumerate(keys)
    ]
    return {"trial_key": "c/pack", "cell_key": "c", "pack": members}


def test_a_finished_pack_replays_each_trials_end_as_its_final_report_carried_it():
    keys = ["c/lr=1/seed=1", "c/lr=2/seed=1", "c/lr=3/seed=1"]
    members = {
        keys[0]: record(keys[0], "finished", {"val_acc": 0.7, **{**FINAL, "best_val_acc": 0.7}}),
        keys[1]: record(
            keys[1], "finished", {"val_acc": 0.9, **{**FINAL, "best_val_acc": 0.9, "steps": 50.0}}
        ),
        keys[2]: record(keys[2], "failed", {"val_acc": 0.3}, **{schema.ERROR: "loss is NaN"}),
    }
    config = _pack_config(keys)
    pack = record("c/pack", "finished", {"val_acc": 0.9})
    replays = replay_results(members, {"c/pack": config}, {"c/pack": pack})
    assert list(replays) == ["c/pack"]  # its trials run only inside it
    replay = replays["c/pack"]
    assert (replay["val_acc"], replay["best_val_acc"], replay["step"]) == (0.9, 0.9, 60)
    assert (replay["done_trial"], replay["replayed"]) == (1, 1)
    outcomes = pack_members(config, "finished", replay, "/ckpt")
    assert [o["status"] for o in outcomes] == ["finished", "finished", "failed"]
    assert [o["metrics"].get("test_acc") for o in outcomes] == [0.75, 0.75, None]
    assert [o["metrics"]["step"] for o in outcomes[:2]] == [60, 50]
    assert outcomes[2]["metrics"]["error"] == "loss is NaN" and math.isnan(
        outcomes[2]["metrics"]["best_val_acc"]
    )
    assert [o["checkpoint"] for o in outcomes] == ["/ckpt/0", "/ckpt/1", None]
    # a trial of the pack still running (its end never written), or the pack itself: the pack trains again
    running = {**members, keys[2]: record(keys[2], "running", {"val_acc": 0.3})}
    assert replay_results(running, {"c/pack": config}, {"c/pack": pack}) == {}
    assert replay_results(members, {"c/pack": config}, {"c/pack": record("c/pack", "running", {})}) == {}
    # no trial finished: the pack's val_acc is NaN, as its own final report makes it
    stopped = {k: record(k, "stopped", {"val_acc": 0.1, "best_val_acc": 0.1}) for k in keys}
    assert math.isnan(replay_results(stopped, {"c/pack": config}, {"c/pack": pack})["c/pack"]["val_acc"])


def _outcome_of(study_plans):
    ends = ["finished", "stopped", "failed", "finished"]
    by_key = {plan.trial_key: end for plan, end in zip(study_plans, ends, strict=False)}
    return lambda plan: by_key[plan.trial_key]


def test_a_resume_replays_ended_runs_and_leaves_them_as_they_ended(tmp_path, mlflow_sqlite_uri):
    uri = mlflow_sqlite_uri
    yaml_path = write_study(tmp_path, "fake-replay")
    study_plans = plans(yaml_path)[:5]
    outcome = _outcome_of(study_plans)
    first = launch_callback(yaml_path, uri)
    first.setup()
    for index, plan in enumerate(study_plans):  # the driver dies while the fifth trial runs
        trial = start(first, plan, f"trial_{index}")
        if index < 4:
            end(first, plan, trial, outcome(plan), tmp_path / "ckpt1")
    first.get_state()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("fake-replay").experiment_id
    trial_runs = f"tags.`{schema.KIND}` = '{schema.KIND_TRIAL}'"
    before = {r.data.tags[schema.TRIAL_KEY]: r for r in client.search_runs([experiment], trial_runs)}
    histories = {
        key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_acc")]
        for key, run in before.items()
    }
    # killed between writing the fourth trial's end and ending its run: its run is left RUNNING
    client.update_run(before[study_plans[3].trial_key].info.run_id, status="RUNNING")

    second = launch_callback(yaml_path, uri, resume=True)
    replays = second.replays({})  # Tune's snapshot predates every trial: it holds none as ended
    finished, stopped, failed, stale, running = (plan.trial_key for plan in study_plans)
    assert set(replays) == {finished, stopped, stale}
    assert replays[finished]["done_trial"] == 1 and replays[finished]["step"] == 30
    assert replays[finished]["val_acc"] == val_acc(study_plans[0])
    assert replays[finished]["test_acc"] == before[finished].data.metrics["test_acc"]
    assert "done_trial" not in replays[stopped] and replays[stopped]["val_acc"] == val_acc(study_plans[1])
    for key, plan in ((finished, study_plans[0]), (stopped, study_plans[1]), (stale, study_plans[3])):
        # the validation history `start` reported, for the scheduler's rungs
        assert replays[key]["val_acc_history"] == [[10, val_acc(plan) * 0.5], [20, val_acc(plan)]]

    second.setup()
    assert client.get_run(before[stale].info.run_id).info.status == "FINISHED"  # as its status tag says
    trials = []
    for index, plan in enumerate(study_plans):
        key = plan.trial_key
        if key in replays:
            trial = FakeTrial(f"trial_{index}", plan.ray_config(), status="TERMINATED")
            second.on_trial_start(0, [], trial)
            trial.last_result = replays[key]
            second.on_trial_result(0, [], trial, replays[key])
            second.on_trial_complete(0, [], trial)
        else:  # the failed trial and the one left running train again
            trial = start(second, plan, f"trial_{index}")
            end(second, plan, trial, "finished", tmp_path / "ckpt2")
            trial.status = "TERMINATED"
        trials.append(trial)
    others = [FakeTrial(p.trial_key, {}, status="TERMINATED") for p in plans(yaml_path)[5:]]
    second.on_experiment_end(trials + others)  # Ray's list holds every trial of the study

    after = {r.data.tags[schema.TRIAL_KEY]: r for r in client.search_runs([experiment], trial_runs)}
    assert sorted(after) == sorted(plan.trial_key for plan in study_plans)  # one run per trial
    for key in (finished, stopped, stale):
        old, new = before[key], after[key]
        assert new.info.run_id == old.info.run_id
        assert new.data.tags == old.data.tags  # status and launches as they were: untouched
        assert new.data.metrics == old.data.metrics
        assert new.info.end_time == old.info.end_time or key == stale  # stale: ended at the resume
        history = [(m.step, m.value) for m in client.get_metric_history(new.info.run_id, "val_acc")]
        assert history == histories[key] and [step for step, _ in history] == [10, 20]
    assert [after[k].info.status for k in (finished, stopped, stale)] == ["FINISHED", "KILLED", "FINISHED"]
    for key in (failed, running):  # continued in the resumed launch
        assert after[key].data.tags[schema.STATUS] == "finished"
        assert after[key].data.tags[schema.LAUNCHES] == f"{first.parent_run_id},{second.parent_run_id}"
    assert client.get_run(second.parent_run_id).info.status == "FINISHED"

    # a new launch without --resume starts a new chain: its resume replays none of the earlier runs
    fresh = launch_callback(yaml_path, uri)
    fresh.setup()
    fresh.close(interrupted=True)
    assert launch_callback(yaml_path, uri, resume=True).replays({}) == {}


def test_a_trials_end_is_written_with_its_last_metrics(tmp_path, mlflow_sqlite_uri):
    from mlflow.entities import Metric, Param, RunTag

    client = MlflowClient(mlflow_sqlite_uri)
    run_id = client.create_run(client.create_experiment("batches")).info.run_id
    calls = []

    class Recording:
        def log_batch(self, run_id, metrics, params, tags):
            calls.append((len(metrics), len(params), len(tags)))
            client.log_batch(run_id, metrics=metrics, params=params, tags=tags)  # MLflow checks its limits

    metrics = [Metric("m", float(i), 1, i) for i in range(2500)]
    params = [Param(f"p{i}", "1") for i in range(150)]
    tags = [RunTag(f"t{i}", "1") for i in range(120)] + [RunTag(schema.STATUS, "finished")]
    _log_batches(Recording(), run_id, metrics, params, tags)
    assert (
        sum(c[0] for c in calls) == 2500
        and sum(c[1] for c in calls) == 150
        and sum(c[2] for c in calls) == 121
    )
    first_tags = next(i for i, c in enumerate(calls) if c[2])
    assert all(c[0] == 0 for c in calls[first_tags + 1 :])  # no metric after the first tags
    assert calls[-1][2] > 0  # the status tag, buffered last, in the last call
    assert client.get_run(run_id).data.tags[schema.STATUS] == "finished"
    assert len(client.get_metric_history(run_id, "m")) == 2500
