"""End to end on a real multi-process cluster: `ray start --head` and a second `ray start --address` node
on 127.0.0.1 with token authentication, an MLflow server (infra/mlflow/start_server.sh, 127.0.0.1) on
PostgreSQL, the demo study submitted with `ray job submit -- cytotune run ...`, its runs read back by
`cytotune best`. (The server's basic-auth mode is tested in test_infra_mlflow.py.)"""

from __future__ import annotations

import os
import subprocess

import pytest
from cluster_harness import BIN

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # the fixture runs the whole demo study


def _mlflow_env(cluster_study, monkeypatch) -> None:
    for name, value in cluster_study.mlflow.client_env().items():
        monkeypatch.setenv(name, value)


def test_the_job_ran_the_whole_study_on_the_cluster(cluster_study):
    assert cluster_study.job_returncode == 0, (
        f"after {cluster_study.wall_s:.0f} s: {cluster_study.job_output[-4000:]}"
    )
    assert "study demo: 12 trials" in cluster_study.job_output
    assert "0 failed" in cluster_study.job_output


def test_the_cluster_refuses_requests_without_its_token(cluster_study):
    assert cluster_study.dashboard_anonymous_status == 401
    assert cluster_study.dashboard_wrong_token_status == 403


def test_trials_ran_on_both_nodes(cluster_study):
    assert len(cluster_study.node_ids) == 2
    assert len(cluster_study.trial_nodes) == 12
    assert all(cluster_study.trial_nodes.values()), cluster_study.trial_nodes
    assert set(cluster_study.trial_nodes.values()) == set(cluster_study.node_ids)


def test_every_trial_is_a_run_in_the_tracking_server(cluster_study, monkeypatch):
    from mlflow import MlflowClient

    _mlflow_env(cluster_study, monkeypatch)
    client = MlflowClient(cluster_study.tracking_uri)
    experiment = client.get_experiment_by_name(cluster_study.study)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], "tags.`cytotune.kind` = 'trial'", max_results=1000)
    assert len(runs) == 12
    assert {run.data.tags["cytotune.status"] for run in runs} <= {"finished", "stopped"}
    assert {run.data.tags["ray.trial_id"] for run in runs} == set(cluster_study.trial_nodes)
    recorded = {run.data.tags["ray.trial_id"]: run.data.tags["ray.node_id"] for run in runs}
    assert recorded == cluster_study.trial_nodes, "each run's node tag is the node its trial ran on"
    stored = cluster_study.mlflow.database.query(
        "SELECT count(*) FROM tags WHERE key = 'cytotune.kind' AND value = 'trial'"
    )
    assert stored == [(12,)], "the trial runs should be rows of the server's PostgreSQL store"


def test_cytotune_best_reads_the_runs_back(cluster_study):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", **cluster_study.mlflow.client_env())
    result = subprocess.run(
        [
            str(BIN / "cytotune"),
            "best",
            "--experiment",
            cluster_study.study,
            "--tracking-uri",
            cluster_study.tracking_uri,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for cell in ("linear_probe/tiny_clip/synthetic/full", "lora/tiny_vit/synthetic/shots=4"):
        assert cell in result.stdout
