"""A researcher's own data, end to end on a real Ray: a study over two named `folder` datasets, Ray storage
given as a file:// URI, tracked in MLflow (source tags, dataset inputs), `best --where dataset=NAME` apart."""

from __future__ import annotations

import getpass

import pytest
from mlflow import MlflowClient
from ray_nodes import one_node_ray
from test_study_datasets import make_folder

from cytotune.data import prepare_dataset
from cytotune.study.grid import expand_cells
from cytotune.study.launch import study_callback
from cytotune.study.runner import run_study
from cytotune.study.spec import load_study
from cytotune.tracking import best_configs

pytestmark = pytest.mark.slow

STUDY = """
name: own_e2e
storage: {storage}
backbones: [tiny_clip]
datasets:
  - {{name: herlev, layout: folder, root: herlev}}
  - {{name: cric, layout: folder, root: cric}}
seeds: [1]
train: {{device: cpu, image_cache_size: 32, batch_size: 16, eval_batch_size: 64, probe_epochs: 5}}
methods:
  - method: linear_probe
    search: {{lr: [0.1, 0.01]}}
"""


@pytest.fixture
def small_ray(tmp_path, monkeypatch):
    """A one-node Ray (2 CPUs) on a free port, with the test's cache folder in its workers' environment."""
    monkeypatch.setenv("CYTOTUNE_CACHE", str(tmp_path / "cache"))
    with one_node_ray() as cluster:
        yield cluster


def test_two_named_folder_datasets_on_file_uri_storage(small_ray, tmp_path, mlflow_sqlite_uri, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_folder(tmp_path / "herlev", ("normal", "abnormal"), per_class=12, seed=0)
    make_folder(tmp_path / "cric", ("nilm", "lsil", "hsil"), per_class=12, seed=7000)
    storage = (tmp_path / "ray results").as_uri()
    path = tmp_path / "own.yaml"
    path.write_text(STUDY.format(storage=storage))
    spec = load_study(path)
    tracking = study_callback(spec, expand_cells(spec), mlflow_sqlite_uri)
    outcome = run_study(spec, tracking_uri=mlflow_sqlite_uri, callbacks=[tracking], say=lambda _: None)

    assert outcome.counts()["finished"] == 4 and not outcome.interrupted
    assert outcome.path == tmp_path / "ray results" / "own_e2e"
    assert (outcome.path / "tuner.pkl").is_file()
    assert not any(p.name.startswith("file:") for p in tmp_path.rglob("*"))

    herlev = best_configs("own_e2e", mlflow_sqlite_uri, "dataset=herlev")
    cric = best_configs("own_e2e", mlflow_sqlite_uri, "dataset=cric")
    assert list(herlev["cell_key"]) == ["linear_probe/tiny_clip/herlev/full"]
    assert list(cric["cell_key"]) == ["linear_probe/tiny_clip/cric/full"]

    digests = {
        name: prepare_dataset("folder", tmp_path / name, cache_dir=tmp_path / "cache").digest
        for name in ("herlev", "cric")
    }
    client = MlflowClient(mlflow_sqlite_uri)
    experiment = client.get_experiment_by_name("own_e2e").experiment_id
    runs = client.search_runs([experiment], "tags.`cytotune.kind` = 'trial'")
    assert len(runs) == 4
    for run in runs:
        name = run.data.params["dataset"]
        assert run.data.params["layout"] == "folder"
        assert run.data.params["dataset_digest"] == digests[name]
        (seen,) = run.inputs.dataset_inputs
        assert (seen.dataset.name, seen.dataset.digest) == (name, digests[name][:16])
        assert run.data.tags["mlflow.user"] == getpass.getuser()
        assert run.data.tags.get("mlflow.source.git.commit")
