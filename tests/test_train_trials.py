"""Trials end to end on generated synthetic data with tiny backbones: probe, LoRA, resume, cache, CLI."""

from __future__ import annotations

import csv
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cytotune.cli import app
from cytotune.config import LoraSettings, TrainSettings, TrialConfig
from cytotune.data.synthetic import generate_synthetic
from cytotune.errors import CytotuneError
from cytotune.models import get_backbone_spec
from cytotune.models.lora import load_adapter
from cytotune.train import TrialResult, run_trial
from cytotune.train import features as feature_cache
from cytotune.train.linear_probe import run_probe_sweep
from cytotune.train.lora_finetune import LoraRun
from cytotune.train.trial_data import trial_data

TIMING = {"images_per_s", "peak_mem_mb", "wall_s"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory) -> Path:
    """Synthetic cytology, 3 classes x 40 images of 32 px (train 28, val 4, test 8 per class)."""
    return generate_synthetic(tmp_path_factory.mktemp("synthetic3"), classes=3, per_class=40, size=32, seed=0)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def config(root: Path, cache_dir: Path, method: str = "linear_probe", **fields) -> TrialConfig:
    train = {"image_cache_size": 32, "warmup_steps": 3, "probe_epochs": 30, "device": "cpu"}
    train.update(fields.pop("train", {}))
    base = {"backbone": "tiny_clip", "lr": 1e-1, "seed": 1}
    base.update(fields)
    return TrialConfig(
        method=method,
        dataset="synthetic",
        root=root,
        cache_dir=cache_dir,
        train=TrainSettings(**train),
        **base,
    )


def lora_config(root: Path, cache_dir: Path, **fields) -> TrialConfig:
    fields["train"] = {"max_steps": 12, "eval_every": 4, **fields.get("train", {})}
    fields.setdefault("lr", 1e-2)
    fields.setdefault("shots", 3)
    return config(root, cache_dir, "lora", **fields)


def untimed(result: TrialResult) -> dict:
    data = result.to_dict()
    for key in TIMING | {"artifacts"}:
        data.pop(key)
    return data


def flat_colours(root: Path, per_class: int = 20) -> Path:
    """A linearly separable image set: one flat colour per class (+ pixel noise), as class folders."""
    rng = np.random.default_rng(0)
    for name, colour in {"blue": (40, 40, 200), "green": (40, 200, 40), "red": (200, 40, 40)}.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.asarray(colour)[None, None, :] + rng.normal(0, 12, (32, 32, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / name / f"{i:03d}.png")
    return root


@pytest.mark.parametrize("backbone", ["tiny_clip", "tiny_vit"])
def test_probe_is_perfect_on_a_linearly_separable_image_set(tmp_path, backbone):
    root = flat_colours(tmp_path / "colours")
    cfg = config(root, tmp_path / "cache", backbone=backbone).model_copy(update={"dataset": "folder"})
    result = run_trial(cfg)
    assert result.best_val_acc == 1.0 and result.test_acc == 1.0 and result.test_macro_f1 == 1.0
    assert result.confusion_matrix == [[4, 0, 0], [0, 4, 0], [0, 0, 4]]
    assert result.classes == ["blue", "green", "red"]


@pytest.mark.parametrize("backbone", ["tiny_clip", "tiny_vit"])
def test_probe_beats_chance_clearly_and_is_deterministic(three_classes, cache_dir, backbone):
    cfg = config(three_classes, cache_dir, backbone=backbone, train={"probe_epochs": 50})
    first, second = run_trial(cfg), run_trial(cfg)
    assert first.test_acc >= 0.55, first.test_acc  # chance is 1/3 (24 test images)
    assert first.test_balanced_acc >= 0.55
    assert untimed(first) == untimed(second)
    assert first.steps == 50 * 3 and first.trainable_params == 3 * (
        get_backbone_spec(backbone).feature_dim + 1
    )
    assert first.trainable_params > 0 and first.images_per_s > 0 and first.peak_mem_mb > 0


def test_probe_reports_each_epoch_and_writes_the_rows_it_used(three_classes, cache_dir, tmp_path):
    reports = []
    cfg = config(three_classes, cache_dir, shots=2, train={"probe_epochs": 7})
    result = run_trial(cfg, report=lambda metrics, state: reports.append((metrics, state)), out_dir=tmp_path)
    assert [m["step"] for m, _ in reports] == list(range(1, 8)) and all(s is None for _, s in reports)
    assert set(reports[0][0]) == {"step", "last_step", "train_loss", "val_acc", "best_val_acc"}
    assert {m["last_step"] for m, _ in reports} == {7}  # 6 train images: one batch, one step per epoch
    assert result.best_val_acc == max(m["val_acc"] for m, _ in reports) == reports[-1][0]["best_val_acc"]
    first_best = next(m["step"] for m, _ in reports if m["val_acc"] == result.best_val_acc)
    assert result.best_step == first_best
    rows = list(csv.DictReader((tmp_path / "trial_manifest.csv").open()))
    roles = [row["role"] for row in rows]
    assert roles.count("train") == 6 and roles.count("val") == 12 and roles.count("test") == 24
    assert all(row["split"] == row["role"] for row in rows)
    assert result.artifacts == {
        "trial_manifest.csv": tmp_path / "trial_manifest.csv",
        "head": tmp_path / "head",
    }


def test_a_packed_probe_sweep_gives_each_trial_its_own_numbers(three_classes, cache_dir):
    cfgs = [
        config(three_classes, cache_dir, lr=lr, seed=seed, shots=4) for lr in (1e-1, 1e-2) for seed in (1, 2)
    ]
    reports = []
    packed = run_probe_sweep(cfgs, report=lambda index, metrics: reports.append(index))
    assert reports == [0, 1, 2, 3] * 30
    for cfg, result in zip(cfgs, packed, strict=True):
        alone = untimed(run_trial(cfg))
        together = untimed(result)
        # test probabilities come from a stacked matmul in the sweep: float32 rounding may differ in the last
        # bits, so what is computed from probabilities (NLL, ECE, reliability bins) agrees to float32
        # precision, the rest exactly
        for name in ("test_nll", "test_ece"):
            assert together.pop(name) == pytest.approx(alone.pop(name), rel=1e-5, abs=1e-7)
        bins, alone_bins = together.pop("test_reliability"), alone.pop("test_reliability")
        assert bins.keys() == alone_bins.keys()
        for name in bins:
            assert bins[name] == pytest.approx(alone_bins[name], rel=1e-5, abs=1e-7)
        assert together.keys() == alone.keys()
        for name, value in together.items():
            assert value == alone[name] or (value != value and alone[name] != alone[name]), name
    with pytest.raises(CytotuneError, match="one cell"):
        run_probe_sweep([cfgs[0], cfgs[0].model_copy(update={"shots": 2})])


def test_feature_cache_is_computed_once_and_shared_by_concurrent_trials(three_classes, tmp_path, monkeypatch):
    calls = []
    extract = feature_cache.extract_features

    def counting(*args, **kwargs):
        calls.append(1)
        return extract(*args, **kwargs)

    monkeypatch.setattr(feature_cache, "extract_features", counting)
    cache = tmp_path / "cache"
    cfgs = [config(three_classes, cache, lr=lr, seed=seed, shots=2) for lr, seed in ((1e-1, 1), (1e-2, 2))]
    results: list[TrialResult] = []
    threads = [threading.Thread(target=lambda c=c: results.append(run_trial(c))) for c in cfgs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and len(calls) == 1
    cfg, data = cfgs[0], trial_data(cfgs[0])
    again = feature_cache.cached_features(
        data.manifest,
        "tiny_clip",
        None,
        cache_dir=cache,
        batch_size=256,
        device=torch.device("cpu"),
    )
    assert not again.computed and len(calls) == 1 and again.features.shape == (120, 32)
    assert len(list((cache / "features").glob("*.npy"))) == 1
    assert not list((cache / "features").glob(".*tmp*"))
    run_trial(cfg.model_copy(update={"backbone": "tiny_vit"}))
    assert len(calls) == 2


def test_probe_raises_on_a_non_finite_loss(three_classes, cache_dir):
    with pytest.raises(
        CytotuneError, match=r"linear probe tiny_clip/synthetic lr=1e\+20 seed=1: .* at step 3"
    ):
        run_trial(config(three_classes, cache_dir, lr=1e20))


def test_lora_raises_on_a_non_finite_loss_naming_the_step(three_classes, cache_dir):
    with pytest.raises(
        CytotuneError, match=r"LoRA tiny_clip/synthetic lr=1e\+20 seed=1: training loss is nan at step 2"
    ):
        run_trial(lora_config(three_classes, cache_dir, lr=1e20, train={"warmup_steps": 0}))


@pytest.fixture(scope="module")
def overfit(three_classes, cache_dir):
    """A LoRA run on 2 images per class, trained without augmentation; frozen weights before training."""
    cfg = lora_config(
        three_classes,
        cache_dir,
        shots=2,
        lr=1e-2,
        lora=LoraSettings(rank=8, dropout=0.0, targets=("q", "k", "v", "o")),
        train={"max_steps": 40, "eval_every": 40, "augment": False},
    )
    run = LoraRun(cfg, trial_data(cfg), torch.device("cpu"))
    frozen = {n: p.detach().clone() for n, p in run.backbone.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in run.backbone.named_parameters() if p.requires_grad}
    run.train()
    return run, frozen, lora


def test_lora_overfits_a_tiny_training_set(overfit):
    run, _, _ = overfit
    assert len(run.data.train) == 6
    assert run.accuracy(run.data.train) == 1.0


def test_lora_training_changes_only_lora_weights(overfit):
    run, frozen, lora = overfit
    params = dict(run.backbone.named_parameters())
    assert frozen and all(torch.equal(params[name], before) for name, before in frozen.items())
    assert lora and all(".lora_" in name for name in lora)
    assert any(not torch.equal(params[name], before) for name, before in lora.items() if "lora_B" in name)


@pytest.fixture(scope="module")
def lora_reference(three_classes, cache_dir, tmp_path_factory):
    """An uninterrupted LoRA trial, its reports and checkpoints (serialised as a checkpoint would be)."""
    cfg = lora_config(three_classes, cache_dir, backbone="tiny_vit")
    reports = []

    def report(metrics, state):
        buffer = io.BytesIO()
        torch.save(state, buffer)
        reports.append((metrics, buffer.getvalue()))

    out = tmp_path_factory.mktemp("lora_out")
    return cfg, run_trial(cfg, report=report, out_dir=out), reports


def test_lora_reports_and_keeps_the_best_validation_state(lora_reference):
    cfg, result, reports = lora_reference
    metrics = [m for m, _ in reports]
    assert [m["step"] for m in metrics] == [4, 8, 12] and result.steps == 12
    assert {m["last_step"] for m in metrics} == {12}
    assert result.best_val_acc == max(m["val_acc"] for m in metrics) == metrics[-1]["best_val_acc"]
    assert result.best_step == next(m["step"] for m in metrics if m["val_acc"] == result.best_val_acc)
    assert all(m["train_loss"] > 0 for m in metrics)
    assert 0 < result.trainable_params < result.total_params
    assert result.test_acc == sum(result.confusion_matrix[i][i] for i in range(3)) / 24


def test_lora_test_metrics_come_from_the_best_validation_step(three_classes, cache_dir, monkeypatch):
    cfg = lora_config(three_classes, cache_dir, backbone="tiny_vit", lr=5e-2)
    scripted = iter([0.5, 0.9, 0.3])  # val accuracy at steps 4, 8, 12: best at 8, the last step is worse
    monkeypatch.setattr(LoraRun, "accuracy", lambda self, rows: next(scripted))
    states = {}

    def report(metrics, state):
        buffer = io.BytesIO()
        torch.save(state, buffer)
        states[metrics["step"]] = buffer.getvalue()

    result = run_trial(cfg, report=report)
    assert (result.best_step, result.best_val_acc, result.steps) == (8, 0.9, 12)

    def test_predictions(step: int) -> tuple[np.ndarray, np.ndarray]:
        run = LoraRun(cfg, trial_data(cfg), torch.device("cpu"))
        run.load_state_dict(torch.load(io.BytesIO(states[step]), weights_only=False))
        return run.predict(run.data.test), run.data.labels(run.data.test)

    best, labels = test_predictions(8)
    last, _ = test_predictions(12)
    assert not np.array_equal(best, last)  # the weights of the last step predict differently
    assert result.test_acc == pytest.approx(float((best == labels).mean()), abs=1e-12)
    recall = [float((best[labels == c] == c).mean()) for c in range(3)]
    assert result.test_per_class_recall == pytest.approx(recall, abs=1e-12)


def test_lora_resumed_from_a_checkpoint_equals_the_uninterrupted_trial(lora_reference):
    cfg, reference, reports = lora_reference
    for index in (0, 1):
        resumed_reports = []
        state = torch.load(io.BytesIO(reports[index][1]), weights_only=False)
        resumed = run_trial(cfg, report=lambda m, s, out=resumed_reports: out.append(m), resume=state)
        assert resumed_reports == [m for m, _ in reports[index + 1 :]]
        assert untimed(resumed) == untimed(reference)


def test_lora_is_deterministic_and_exports_its_adapter(lora_reference):
    cfg, reference, _ = lora_reference
    assert untimed(run_trial(cfg)) == untimed(reference)
    adapter = reference.artifacts["adapter"]
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    backbone, head, meta = load_adapter(adapter)
    assert meta["backbone"] == "tiny_vit" and meta["classes"] == reference.classes
    assert head.out_features == 3


def test_lora_few_shot_steps_follow_base_plus_per_shot(three_classes, cache_dir):
    from cytotune.train.lora_finetune import lora_steps

    cfg = config(three_classes, cache_dir, "lora", shots=4, train={"base_steps": 50, "steps_per_shot": 100})
    assert lora_steps(cfg, 16) == 450
    assert lora_steps(cfg.model_copy(update={"shots": None, "fraction": 0.5}), 100) == 100 * 4
    capped = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": 7})})
    assert lora_steps(capped, 16) == 7


def test_cli_train_prints_json_and_a_table(three_classes, cache_dir):
    args = ["train", "--method", "linear_probe", "--backbone", "tiny_clip", "--dataset", "synthetic"]
    args += [
        "--root",
        str(three_classes),
        "--lr",
        "0.1",
        "--seed",
        "1",
        "--shots",
        "2",
        "--probe-epochs",
        "5",
    ]
    args += ["--device", "cpu", "--cache-dir", str(cache_dir)]
    runner = CliRunner()
    as_json = runner.invoke(app, [*args, "--json"])
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.output)
    assert data["steps"] == 5 and len(data["confusion_matrix"]) == 3
    table = runner.invoke(app, args)
    assert table.exit_code == 0 and "test_acc" in table.output and "class_0" in table.output
    bad = runner.invoke(app, [*args, "--method", "svm"])
    assert bad.exit_code != 0 and "method" in str(bad.exception)
