"""The probe features a study prepares on the driver are the ones its trials read: no trial extracts again."""

from __future__ import annotations

from pathlib import Path

import cytotune.train.features as feature_cache
from cytotune.data.synthetic import generate_synthetic
from cytotune.study.grid import expand_cells
from cytotune.study.prepare import prepare_data
from cytotune.study.spec import load_study
from cytotune.study.trainable import trial_config
from cytotune.train import run_trial

STUDY = """
name: prepared
backbones: [tiny_clip, tiny_vit]
datasets:
  - {name: synthetic, root: synthetic}
seeds: [1, 2]
train: {device: cpu, image_cache_size: 32, eval_batch_size: 50, probe_epochs: 2, warmup_steps: 1}
methods:
  - method: linear_probe
    search: {lr: [0.1, 0.01]}
    resources: {cpus: 1, gpus: 0}
  - method: knn
    shots: [2]
    k: 1
    resources: {cpus: 1, gpus: 0}
  - method: lora
    shots: [2]
    lr: 0.01
    resources: {cpus: 1, gpus: 0}
"""


def test_trials_read_the_probe_features_the_study_prepared(tmp_path: Path, monkeypatch):
    generate_synthetic(tmp_path / "synthetic", classes=2, per_class=12, size=32, seed=0)
    (tmp_path / "study.yaml").write_text(STUDY)
    monkeypatch.setenv("CYTOTUNE_CACHE", str(tmp_path / "cache"))
    extracted: list[str] = []
    extract = feature_cache.extract_features

    def counting(manifest, backbone, *args, **kwargs):
        extracted.append(backbone)
        return extract(manifest, backbone, *args, **kwargs)

    monkeypatch.setattr(feature_cache, "extract_features", counting)
    spec = load_study(tmp_path / "study.yaml")
    cells = expand_cells(spec)
    said: list[str] = []
    prepare_data(spec, cells, features=True, say=said.append)
    # one extraction per backbone, shared by the probe and knn cells; none for LoRA
    assert sorted(extracted) == ["tiny_clip", "tiny_vit"]
    assert sum(line.startswith("probe features of") for line in said) == 2
    feature_cells = [cell for cell in cells if cell.template.method != "lora"]
    assert len(feature_cells) == 4
    for cell in feature_cells:
        values = cell.grid_values()[-1]
        plan = cell.trial(values, cell.seeds[-1])
        result = run_trial(trial_config(plan.ray_config()))  # the config as the study's trainable gets it
        assert 0.0 <= result.test_acc <= 1.0
    assert sorted(extracted) == ["tiny_clip", "tiny_vit"], "a trial missed the prepared feature cache"
    assert len(list((tmp_path / "cache" / "features").glob("*.npy"))) == 2
