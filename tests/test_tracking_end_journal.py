"""A trial's end that a killed driver had not yet written to MLflow is kept in the study's end journal and
written to its run on resume, so the trial replays its end instead of training again; the journal's lines
read back as written, a line cut short is skipped, and written ends are dropped at each snapshot."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from tracking_fakes import end, final_metrics, launch_callback, plans, start, write_study

from cytotune.tracking import schema
from cytotune.tracking.end_journal import EndJournal, decode, encode, trial_end


class UnwrittenLanes:
    """The lanes of a driver about to be killed: its MLflow writes are queued and never run."""

    def __init__(self) -> None:
        self.queued = 0

    def submit(self, lane, call) -> None:
        self.queued += 1

    def wait(self) -> None:
        return None


def _run_of(client: MlflowClient, experiment: str, trial_key: str):
    trial_runs = f"tags.`{schema.KIND}` = '{schema.KIND_TRIAL}'"
    runs = client.search_runs([experiment], f"{trial_runs} and tags.`{schema.TRIAL_KEY}` = '{trial_key}'")
    assert len(runs) == 1
    return runs[0]


def test_ends_the_killed_driver_had_not_written_reach_their_runs_on_resume_and_replay(
    tmp_path, mlflow_sqlite_uri
):
    uri = mlflow_sqlite_uri
    yaml_path = write_study(tmp_path, "fake-journal")
    finished, stopped, failed, running, unmade = plans(yaml_path)[:5]
    journal = tmp_path / "driver" / "trial_ends.jsonl"
    first = launch_callback(yaml_path, uri)
    first.end_journal = EndJournal(journal)
    first.setup()
    trials = {plan.trial_key: start(first, plan, f"trial_{i}") for i, plan in enumerate(plans(yaml_path)[:4])}
    first.get_state()  # Tune's snapshot: every run holds steps 10 and 20
    assert not journal.exists()
    first._lanes = UnwrittenLanes()  # from here the driver's writes trail behind, and it is killed
    end(first, finished, trials[finished.trial_key], "finished", tmp_path / "ckpt")
    end(first, stopped, trials[stopped.trial_key], "stopped", tmp_path / "ckpt")
    end(first, failed, trials[failed.trial_key], "failed", tmp_path / "ckpt")
    # a short trial starts and ends while even the creation of its run waits in the queue
    end(first, unmade, start(first, unmade, "trial_4"), "finished", tmp_path / "ckpt")
    assert first._lanes.queued > 0

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("fake-journal").experiment_id
    for plan in (finished, stopped, failed, running):  # MLflow lost every end with the driver
        assert _run_of(client, experiment, plan.trial_key).data.tags[schema.STATUS] == schema.RUNNING
    trial_runs = f"tags.`{schema.KIND}` = '{schema.KIND_TRIAL}'"
    assert len(client.search_runs([experiment], trial_runs)) == 4  # none for the last trial
    assert len(journal.read_text().splitlines()) == 4

    second = launch_callback(yaml_path, uri, resume=True)
    second.end_journal = EndJournal(journal)
    assert second.recover_ends() == 4
    assert not journal.exists()
    replays = second.replays({})  # Tune's snapshot holds none of them as ended
    assert set(replays) == {finished.trial_key, stopped.trial_key, unmade.trial_key}
    assert replays[unmade.trial_key]["test_acc"] == final_metrics(unmade)["test_acc"]
    run = _run_of(client, experiment, unmade.trial_key)  # made from the journal, as the driver makes it
    assert (run.info.status, run.data.tags[schema.STATUS]) == ("FINISHED", schema.FINISHED)
    assert run.data.tags[schema.LAUNCHES] == first.parent_run_id
    assert run.data.tags[schema.PARENT_RUN_ID] == first.parent_run_id
    assert float(run.data.params["lr"]) == unmade.config.lr
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {schema.TRIAL_ARTIFACT, "result.json"}
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [10, 20]

    final = final_metrics(finished)
    assert replays[finished.trial_key]["done_trial"] == 1 and replays[finished.trial_key]["step"] == 30
    assert replays[finished.trial_key]["test_acc"] == final["test_acc"]
    assert "done_trial" not in replays[stopped.trial_key]
    run = _run_of(client, experiment, finished.trial_key)
    assert (run.info.status, run.data.tags[schema.STATUS]) == ("FINISHED", schema.FINISHED)
    assert {m: run.data.metrics[m] for m in final} == final
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {
        "result.json",
        "trial_manifest.csv",
        "confusion_matrix.png",
    }
    history = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
    assert history == [10, 20]  # written once each, before the kill
    run = _run_of(client, experiment, stopped.trial_key)
    assert (run.info.status, run.data.tags[schema.STATUS]) == ("KILLED", schema.STOPPED)
    run = _run_of(client, experiment, failed.trial_key)
    assert (run.info.status, run.data.tags[schema.STATUS]) == ("FAILED", schema.FAILED)
    assert "loss is NaN" in run.data.tags[schema.ERROR]
    run = _run_of(client, experiment, running.trial_key)  # it had not ended: it trains again
    assert (run.info.status, run.data.tags[schema.STATUS]) == ("RUNNING", schema.RUNNING)


def test_an_end_reads_back_as_written_a_cut_line_is_skipped_and_written_ends_are_dropped(tmp_path):
    config = {"trial_key": "c/lr=0.1/seed=1", "cell_key": "c"}
    batch = (
        [Metric("val_acc", 0.5, 1000, 10), Metric("test_nll", math.nan, 1001, 30)],
        [Param("lr", "0.1")],
        [RunTag(schema.STATUS, schema.FINISHED)],
    )
    first = trial_end("t1", config, "launch", "run1", "FINISHED", batch, ("/ckpt/t1", "local"))
    back = decode(encode(first))
    assert back.metrics[0] == ("val_acc", 0.5, 1000, 10) and math.isnan(back.metrics[1][1])
    assert (back.params, back.tags, back.files) == (
        [("lr", "0.1")],
        [(schema.STATUS, schema.FINISHED)],
        ("/ckpt/t1", "local"),
    )
    assert [m.key for m in back.batch()[0]] == ["val_acc", "test_nll"]

    journal = EndJournal(tmp_path / "ends.jsonl")
    journal.append(first)
    second = trial_end(
        "t2", {**config, "trial_key": "c/lr=0.1/seed=2"}, "launch", None, "KILLED", ([], [], [])
    )
    journal.append(second)
    with journal.path.open("a") as out:
        out.write('{"key": "t3", "trial_key"')  # the driver died while writing a third
    assert [e.key for e in journal.read()] == ["t1", "t2"]
    assert journal.read()[1].run_id is None and journal.read()[1].files is None

    journal.written("t1")
    journal.compact()  # at Tune's snapshot: only the end MLflow does not hold yet
    assert [e.key for e in EndJournal(journal.path).read()] == ["t2"]
    journal.written("t2")
    journal.compact()
    assert not journal.path.exists()


def test_a_journaled_end_that_cannot_be_written_keeps_the_journal_and_the_others_are_written(
    tmp_path, mlflow_sqlite_uri
):
    """Ends are written several at once; one whose run MLflow no longer has fails the resume once the
    others are written, and the journal stays for the next resume, which writes nothing twice."""
    yaml_path = write_study(tmp_path, "fake-journal-fail")
    trial_plans = plans(yaml_path)[:3]
    journal = tmp_path / "driver" / "trial_ends.jsonl"
    first = launch_callback(yaml_path, mlflow_sqlite_uri)
    first.end_journal = EndJournal(journal)
    first.setup()
    trials = [start(first, plan, f"trial_{i}") for i, plan in enumerate(trial_plans)]
    first.get_state()
    first._lanes = UnwrittenLanes()
    for plan, trial in zip(trial_plans, trials, strict=True):
        end(first, plan, trial, "stopped", tmp_path / "ckpt")
    lost = replace(decode(journal.read_text().splitlines()[0]), key="gone", run_id="0" * 32)  # no such run
    journal.write_text(encode(lost) + journal.read_text())  # first: the others are written all the same

    second = launch_callback(yaml_path, mlflow_sqlite_uri, resume=True)
    second.end_journal = EndJournal(journal)
    with pytest.raises(MlflowException, match="not found"):
        second.recover_ends()
    assert journal.exists()
    client = MlflowClient(mlflow_sqlite_uri)
    experiment = client.get_experiment_by_name("fake-journal-fail").experiment_id
    for plan in trial_plans:
        assert _run_of(client, experiment, plan.trial_key).data.tags[schema.STATUS] == schema.STOPPED
    kept = [line for line in journal.read_text().splitlines() if '"gone"' not in line]
    journal.write_text("".join(line + "\n" for line in kept))
    third = launch_callback(yaml_path, mlflow_sqlite_uri, resume=True)
    third.end_journal = EndJournal(journal)
    assert len(kept) == 3 and third.recover_ends() == 0  # each written before, none again
    assert not journal.exists()
