"""MlflowCallback buffers metrics per trial and writes them in few log_batch calls, losing none: a finished
trial, a failed one, one left running when the launch is interrupted, and writes the server refused once."""

from __future__ import annotations

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from tracking_fakes import FakeTrial, launch_callback, plans, write_study

from cytotune.tracking import schema

STEPS = list(range(10, 110, 10))


def _report(callback, trial: FakeTrial, steps: list[int]) -> None:
    for step in steps:
        result = {"step": step, "train_loss": 1.0 / step, "val_acc": step / 1000, "best_val_acc": step / 1000}
        trial.last_result = result
        callback.on_trial_result(0, [], trial, result)


def _steps(client: MlflowClient, run_id: str, metric: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, metric))


def test_every_buffered_step_lands_when_trials_finish_fail_or_the_launch_is_interrupted(
    tmp_path, mlflow_sqlite_uri, monkeypatch
):
    uri = mlflow_sqlite_uri
    yaml_path = write_study(tmp_path, "fake-batching")
    finished, failed, interrupted, refused = plans(yaml_path)[:4]
    callback = launch_callback(yaml_path, uri)
    callback.setup()
    calls: list[int] = []
    log_batch = callback.client.log_batch

    def counted(run_id, metrics=(), params=(), tags=(), **kwargs):
        calls.append(len(metrics))
        return log_batch(run_id, metrics=metrics, params=params, tags=tags, **kwargs)

    monkeypatch.setattr(callback.client, "log_batch", counted)

    everything = enumerate(plans(yaml_path))
    trials = {plan.trial_key: FakeTrial(f"t{i}", plan.ray_config()) for i, plan in everything}
    for plan in (finished, failed, interrupted, refused):
        callback.on_trial_start(0, [], trials[plan.trial_key])
    callback.wait()  # runs are opened on the callback's writer threads
    calls.clear()
    _report(callback, trials[finished.trial_key], STEPS)
    _report(callback, trials[failed.trial_key], STEPS[:5])
    _report(callback, trials[interrupted.trial_key], STEPS[:7])
    callback.wait()
    assert calls == []  # buffered: nothing written per report
    trials[finished.trial_key].last_result = {**trials[finished.trial_key].last_result, "done_trial": 1}
    callback.on_trial_complete(0, [], trials[finished.trial_key])
    callback.wait()
    assert calls == [len(STEPS) * 3]  # one log_batch: every step's 3 metrics (with params and status tag)
    trials[failed.trial_key].error = "RuntimeError: loss is NaN"
    callback.on_trial_error(0, [], trials[failed.trial_key])

    # the server refuses one write (as MLflow raises after its retries): the buffer is kept for the next flush
    _report(callback, trials[refused.trial_key], STEPS[:3])

    def refuse_once(run_id, **kwargs):
        monkeypatch.setattr(callback.client, "log_batch", counted)
        raise MlflowException("503 Service Unavailable")

    monkeypatch.setattr(callback.client, "log_batch", refuse_once)
    assert callback.get_state() is None  # Tune saves its experiment state: flush (the refused run is kept)
    _report(callback, trials[refused.trial_key], STEPS[3:6])
    callback.close(interrupted=True)

    client = MlflowClient(uri)
    runs = {run_id: client.get_run(run_id) for run_id in callback._runs.values()}
    by_key = {run.data.tags[schema.TRIAL_KEY]: run for run in runs.values()}
    expected = {
        finished.trial_key: (STEPS, "FINISHED", schema.FINISHED),
        failed.trial_key: (STEPS[:5], "FAILED", schema.FAILED),
        interrupted.trial_key: (STEPS[:7], "KILLED", schema.RUNNING),
        refused.trial_key: (STEPS[:6], "KILLED", schema.RUNNING),
    }
    for key, (steps, run_status, status) in expected.items():
        run = by_key[key]
        assert run.info.status == run_status, key
        for metric in schema.STEP_METRICS:
            assert _steps(client, run.info.run_id, metric) == steps, (key, metric)
        assert run.data.tags[schema.STATUS] == status
    assert by_key[failed.trial_key].data.tags[schema.ERROR] == "RuntimeError: loss is NaN"
    assert client.get_run(callback.parent_run_id).info.status == "KILLED"


def test_a_run_whose_creation_was_refused_is_created_by_its_next_write(
    tmp_path, mlflow_sqlite_uri, monkeypatch
):
    yaml_path = write_study(tmp_path, "fake-refused-create")
    plan = plans(yaml_path)[0]
    callback = launch_callback(yaml_path, mlflow_sqlite_uri)
    callback.setup()
    create_run = callback.client.create_run

    def refuse_once(*args, **kwargs):
        monkeypatch.setattr(callback.client, "create_run", create_run)
        raise MlflowException("503 Service Unavailable")

    monkeypatch.setattr(callback.client, "create_run", refuse_once)
    trial = FakeTrial("t0", plan.ray_config())
    callback.on_trial_start(0, [], trial)
    _report(callback, trial, STEPS[:4])
    callback.wait()
    assert "t0" not in callback._runs  # refused: no run yet, the metrics are kept
    trial.last_result = {**trial.last_result, "done_trial": 1}
    callback.on_trial_complete(0, [], trial)
    callback.close()

    client = MlflowClient(mlflow_sqlite_uri)
    [run] = client.search_runs(
        [callback.experiment_id], f"tags.`{schema.KIND}` = '{schema.KIND_TRIAL}'", max_results=10
    )
    assert run.info.status == "FINISHED" and run.data.tags[schema.STATUS] == schema.FINISHED
    assert run.data.params["lr"] == str(plan.config.lr)
    assert _steps(client, run.info.run_id, "val_acc") == STEPS[:4]
