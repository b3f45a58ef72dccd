"""infra/mlflow/start_server.sh for real: PostgreSQL store, 127.0.0.1, MLflow's basic-auth app; anonymous
requests refused, a client with MLFLOW_TRACKING_USERNAME/PASSWORD served, cytotune's own check and its fast
reads (REST search, artifact files) let through."""

from __future__ import annotations

import pytest
from cluster_harness import MlflowServer, PostgresDatabase, Processes, remove_tree, short_tempdir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def basic_auth_server():
    root = short_tempdir()
    procs = Processes(root)
    database = PostgresDatabase()
    database.create()
    try:
        server = MlflowServer(procs, database, auth="basic-auth")
        server.start()
        server.wait()
        yield server
    finally:
        procs.stop()
        database.drop()
        left = procs.marked()
        remove_tree(root)
        assert not left, f"processes left running: {[p.pid for p in left]}"


def _credentials(server: MlflowServer, monkeypatch) -> None:
    for name, value in server.client_env().items():
        monkeypatch.setenv(name, value)


def test_the_server_refuses_anonymous_requests_and_serves_the_credentials(basic_auth_server, monkeypatch):
    from mlflow import MlflowClient

    assert basic_auth_server.anonymous_status() == 401
    _credentials(basic_auth_server, monkeypatch)
    client = MlflowClient(basic_auth_server.uri)
    experiment = client.create_experiment("infra-basic-auth")
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "val_acc", 0.5)
    client.log_text(run.info.run_id, "artifact through the server", "note.txt")
    assert client.get_run(run.info.run_id).data.metrics == {"val_acc": 0.5}
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["note.txt"]


def test_cytotune_reads_runs_and_artifacts_of_a_basic_auth_server_with_the_credentials(
    basic_auth_server, monkeypatch
):
    from mlflow import MlflowClient

    from cytotune.tracking.run_records import search_records
    from cytotune.tracking.runs import read_artifact_texts

    _credentials(basic_auth_server, monkeypatch)
    uri = basic_auth_server.uri
    client = MlflowClient(uri)
    experiment = client.create_experiment("infra-basic-auth-reads")
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "val_acc", 0.5)
    client.log_text(run.info.run_id, "read back", "note.txt")
    records = search_records(uri, experiment, "")
    assert [(r.run_id, r.metrics) for r in records] == [(run.info.run_id, {"val_acc": 0.5})]
    assert read_artifact_texts(uri, [run.info.artifact_uri], "note.txt") == ["read back"]


def test_cytotune_checks_a_basic_auth_server_with_the_client_credentials(basic_auth_server, monkeypatch):
    from cytotune.tracking import check_tracking

    _credentials(basic_auth_server, monkeypatch)
    check_tracking(basic_auth_server.uri)
