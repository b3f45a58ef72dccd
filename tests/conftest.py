"""Shared test fixtures."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """$CYTOTUNE_CACHE pointed at tmp_path/cache (manifests of read-only data, image and feature caches)."""
    monkeypatch.setenv("CYTOTUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def mlflow_sqlite_template(tmp_path_factory):
    """An empty MLflow SQLite store whose tables are made once per session (its migrations take seconds)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_sqlite_uri(mlflow_sqlite_template, tmp_path):
    """A fresh embedded tracking URI (tmp_path/mlflow.db, as the default), copied from the template."""
    shutil.copy(mlflow_sqlite_template, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="session")
def cluster_study():
    """The demo study submitted with `ray job submit` to a two-node, token-authenticated Ray cluster on
    127.0.0.1, tracked by an MLflow server on 127.0.0.1 (infra/mlflow/start_server.sh) on a PostgreSQL
    database; the server stays up for the session, Ray stops once the job ends (tests/cluster_harness.py)."""
    from cluster_harness import cluster_study_session

    with cluster_study_session(auth="basic-auth") as study:
        yield study


@pytest.fixture()
def optuna_demo_study(tmp_path):
    """search_spaces/demo.yaml with the probes' lr searched by Optuna (3 samples per cell), not a grid."""
    from cytotune.study.spec import load_study

    text = (Path(__file__).resolve().parent.parent / "search_spaces" / "demo.yaml").read_text()
    grid = "      lr: [1.0e-1, 1.0e-2]"
    assert grid in text
    path = tmp_path / "optuna.yaml"
    path.write_text(
        text.replace(grid, "      lr: {optuna: loguniform, low: 1.0e-4, high: 1.0e-1}\n    samples: 3")
    )
    return load_study(path)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models and tensors run fastest on one torch thread, and far faster on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
