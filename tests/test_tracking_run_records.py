"""Reading runs fast: start-time slices cover every time exactly once; the REST search read as JSON, in
slices at once, gives what MlflowClient gives (against a real `mlflow server`), and a database store gives
the same through MlflowClient; small artifacts read in one request each, through a server or from disk."""

from __future__ import annotations

import math
import re
import shutil

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from cytotune.bench.servers import MlflowServer
from cytotune.tracking.run_records import record_of_run, search_records, start_time_slices
from cytotune.tracking.runs import read_artifact_texts

CLAUSE = re.compile(r"attributes\.start_time (>=|<) (\d+)")


def holds(clauses: str, time: int) -> bool:
    """Whether a start time satisfies a slice's clauses (read back from the filter text)."""
    tests = {">=": lambda bound: time >= bound, "<": lambda bound: time < bound}
    return all(tests[op](int(bound)) for op, bound in CLAUSE.findall(clauses))


@pytest.mark.parametrize(
    ("first", "last", "slices"), [(0, 0, 8), (10, 13, 8), (100, 1099, 8), (5, 9, 1), (7, 100, 3)]
)
def test_slices_cover_every_start_time_once(first, last, slices):
    clauses = start_time_slices(first, last, slices)
    assert len(clauses) == min(slices, last - first + 1)
    for time in range(first - 50, last + 50):
        assert sum(holds(clause, time) for clause in clauses) == 1, time
    assert all(CLAUSE.sub("", clause).replace(" AND ", "") == "" for clause in clauses)


def test_slices_split_the_span_about_evenly():
    clauses = start_time_slices(1000, 1799, 8)
    sizes = [sum(holds(clause, time) for time in range(1000, 1800)) for clause in clauses]
    assert sizes == [100] * 8


def comparable(record) -> tuple:
    """A record with its metrics as text (NaN equals NaN)."""
    metrics = {key: "nan" if math.isnan(value) else repr(value) for key, value in record.metrics.items()}
    return (record.run_id, record.status, record.start_time, record.end_time, record.artifact_uri,
            record.params, record.tags, metrics)  # fmt: skip


def log_runs(client: MlflowClient, experiment_id: str) -> None:
    """Runs of every shape a study leaves: finished with params, tags and metrics (NaN, infinities, a
    negative), running without an end, one without params or metrics, one deleted, one of another kind."""
    for index in range(23):
        run = client.create_run(experiment_id, start_time=1_700_000_000_000 + 37 * index)
        run_id = run.info.run_id
        client.log_batch(
            run_id,
            metrics=[
                Metric("best_val_acc", 0.5 + index / 100, 0, 3),
                Metric("odd", [math.nan, math.inf, -math.inf, -2.5][index % 4], 0, 0),
            ]
            * (index != 5),
            params=[Param("lr", f"{10.0 ** -(index % 3)}"), Param("lora.targets", "q,v")] * (index != 5),
            tags=[RunTag("cytotune.kind", "other" if index == 7 else "trial"), RunTag("note", "é ü 'q'")],
        )
        if index % 6 != 1:
            client.set_terminated(
                run_id, "KILLED" if index % 2 else "FINISHED", end_time=1_800_000_000_000 + index
            )
        if index == 11:
            client.delete_run(run_id)


@pytest.fixture(scope="module")
def server(tmp_path_factory, mlflow_sqlite_template):
    folder = tmp_path_factory.mktemp("records-server")
    shutil.copy(mlflow_sqlite_template, folder / "server.db")
    started = MlflowServer(f"sqlite:///{folder / 'server.db'}", folder, workers=1)
    try:
        yield started.start()
    finally:
        started.stop()


@pytest.mark.slow
def test_rest_search_in_slices_gives_what_mlflow_client_gives(server):
    client = MlflowClient(server)
    experiment_id = client.create_experiment("records")
    log_runs(client, experiment_id)
    trial_filter = "tags.`cytotune.kind` = 'trial'"
    expected = sorted(
        (comparable(record_of_run(run)) for run in client.search_runs([experiment_id], trial_filter)),
        key=lambda row: (row[2], row[0]),
    )
    assert len(expected) == 21  # 23, less the deleted run and the other kind
    for slices in (1, 3, 8, 40):
        assert [
            comparable(r) for r in search_records(server, experiment_id, trial_filter, slices)
        ] == expected
    assert search_records(server, experiment_id, "tags.`cytotune.kind` = 'none'") == []


def test_a_database_store_reads_through_mlflow_client(mlflow_sqlite_uri):
    client = MlflowClient(mlflow_sqlite_uri)
    experiment_id = client.create_experiment("records-db")
    log_runs(client, experiment_id)
    records = search_records(mlflow_sqlite_uri, experiment_id, "tags.`cytotune.kind` = 'trial'")
    assert len(records) == 21
    assert [r.start_time for r in records] == sorted(r.start_time for r in records)
    running = [r for r in records if r.end_time is None]
    assert len(running) == 3 and {r.status for r in running} == {"RUNNING"}
    bare = next(r for r in records if not r.params)
    assert bare.metrics == {} and bare.tags["cytotune.kind"] == "trial"


def artifact_roots(client: MlflowClient, name: str) -> list[str]:
    """Artifact URIs of two runs, the first holding result.json, the second nothing."""
    experiment_id = client.create_experiment(name)
    runs = [client.create_run(experiment_id) for _ in range(2)]
    client.log_text(runs[0].info.run_id, '{"test_acc": 0.5}', "result.json")
    return [run.info.artifact_uri for run in runs]


@pytest.mark.slow
def test_artifact_texts_are_read_through_the_server_and_missing_ones_are_none(server):
    roots = artifact_roots(MlflowClient(server), "artifacts")
    assert roots[0].startswith("mlflow-artifacts:")
    assert read_artifact_texts(server, roots * 3, "result.json") == ['{"test_acc": 0.5}', None] * 3


def test_artifact_texts_are_read_from_a_local_store(mlflow_sqlite_uri):
    roots = artifact_roots(MlflowClient(mlflow_sqlite_uri), "artifacts-local")
    assert read_artifact_texts(mlflow_sqlite_uri, roots, "result.json") == ['{"test_acc": 0.5}', None]
