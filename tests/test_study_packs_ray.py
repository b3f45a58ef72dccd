"""Packed cells end to end on a real Ray with a real MLflow: a LoRA cell and a linear-probe cell of 2 lr x 2
seeds, run packed (one Ray trial per cell) and unpacked (one per trial); `best` and the runs read the same."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mlflow import MlflowClient
from ray_nodes import one_node_ray

from cytotune.data.synthetic import generate_synthetic
from cytotune.study.grid import expand_cells
from cytotune.study.launch import study_callback
from cytotune.study.runner import run_study
from cytotune.study.spec import load_study
from cytotune.tracking import best_configs, runs_frame, schema
from cytotune.tracking.runs import read_artifact_text

pytestmark = pytest.mark.slow

STUDY = """
name: {name}
storage: {storage}
backbones: [tiny_clip]
datasets: [{{name: synthetic, root: {root}}}]
seeds: [1, 2]
train: {{device: cpu, image_cache_size: 32, batch_size: 8, eval_batch_size: 64, warmup_steps: 2}}
methods:
  - method: lora
    shots: [2]
    lora: {{rank: 2, targets: [q, v]}}
    search: {{lr: [1.0e-2, 1.0e-3]}}
    train: {{base_steps: 4, steps_per_shot: 2, eval_every: 4}}
    pack: {pack}
  - method: linear_probe
    search: {{lr: [1.0e-1, 1.0e-2]}}
    train: {{probe_epochs: 4}}
    pack: {pack}
"""
LORA_CELL = "lora/tiny_clip/synthetic/shots=2/rank=2,targets=qv"
PROBE_CELL = "linear_probe/tiny_clip/synthetic/full"
EXACT = ("best_val_acc", "best_step", "test_acc", "test_balanced_acc", "test_macro_f1", "steps")


@pytest.fixture(scope="module")
def small_ray(tmp_path_factory):
    """A one-node Ray (2 CPUs) on a free port, its workers caching under the module's folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CYTOTUNE_CACHE", str(tmp_path_factory.mktemp("cache")))
        with one_node_ray() as cluster:
            yield cluster


def run(tmp_path, uri: str, name: str, pack: bool, root):
    path = tmp_path / f"{name}.yaml"
    text = STUDY.format(name=name, storage=tmp_path / "ray", root=root, pack=str(pack).lower())
    path.write_text(text)
    spec = load_study(path)
    tracking = study_callback(spec, expand_cells(spec), uri)
    outcome = run_study(spec, tracking_uri=uri, callbacks=[tracking], say=lambda _: None)
    tracking.close(interrupted=outcome.interrupted)
    return outcome


def test_a_packed_study_reads_back_as_the_unpacked_one(small_ray, tmp_path, mlflow_sqlite_uri):
    root = generate_synthetic(tmp_path / "synthetic", classes=3, per_class=12, size=32, seed=0)
    packed = run(tmp_path, mlflow_sqlite_uri, "packed", True, root)
    alone = run(tmp_path, mlflow_sqlite_uri, "alone", False, root)

    for outcome in (packed, alone):
        assert len(outcome.trials) == 8 and outcome.counts()["finished"] == 8 and not outcome.interrupted
    client = MlflowClient(mlflow_sqlite_uri)
    experiment = client.get_experiment_by_name("packed").experiment_id
    packs = client.search_runs([experiment], f"tags.`{schema.KIND}` = '{schema.KIND_PACK}'")
    assert sorted(run.data.tags[schema.CELL_KEY] for run in packs) == [PROBE_CELL, LORA_CELL]
    launch = client.search_runs([experiment], f"tags.`{schema.KIND}` = '{schema.KIND_LAUNCH}'")[0]
    assert launch.info.status == "FINISHED"

    best = {name: best_configs(name, mlflow_sqlite_uri).set_index("cell_key") for name in ("packed", "alone")}
    assert list(best["packed"].index) == [PROBE_CELL, LORA_CELL] == list(best["alone"].index)
    assert (best["packed"]["selection"] == "chosen").all() and (best["packed"]["n_seeds"] == 2).all()
    assert (best["packed"]["n_configurations"] == 2).all() and not best["packed"]["missing_seeds"].any()
    assert list(best["packed"]["lr"]) == list(best["alone"]["lr"])
    for column in ("val_acc_mean", "test_acc_mean", "test_acc_std"):
        assert np.allclose(best["packed"][column], best["alone"][column], rtol=0, atol=1e-9, equal_nan=True)

    runs = runs_frame("packed", mlflow_sqlite_uri).set_index("trial_key")
    separate = runs_frame("alone", mlflow_sqlite_uri).set_index("trial_key")
    assert sorted(runs.index) == sorted(separate.index) and (runs["status"] == "finished").all()
    for column in EXACT:
        assert (runs[column] == separate.loc[runs.index, column]).all(), column
    assert np.allclose(runs["test_nll"], separate.loc[runs.index, "test_nll"], rtol=1e-3)
    by_pack = {run.data.tags[schema.CELL_KEY]: run.info.run_id for run in packs}
    assert (runs["parent_run_id"] == runs["cell_key"].map(by_pack)).all()

    lora = runs[runs["cell_key"] == LORA_CELL].iloc[0]
    files = {item.path for item in client.list_artifacts(lora["run_id"])}
    assert {"adapter", "result.json", "trial_manifest.csv", "confusion_matrix.png"} <= files
    for name in ("val_acc", "train_loss"):  # the curves: evaluations at steps 4 and 8, then the final report
        packed_curve = sorted((m.step, m.value) for m in client.get_metric_history(lora["run_id"], name))
        alone = client.get_metric_history(separate.loc[lora.name, "run_id"], name)
        alone_curve = sorted((m.step, m.value) for m in alone)
        assert [step for step, _ in packed_curve] == ([4, 8, 8] if name == "val_acc" else [4, 8])
        assert np.allclose([v for _, v in packed_curve], [v for _, v in alone_curve])
    pack_keys = json.loads(read_artifact_text(client, by_pack[LORA_CELL], schema.PACK_ARTIFACT))
    assert sorted(pack_keys) == sorted(runs.index[runs["cell_key"] == LORA_CELL])
