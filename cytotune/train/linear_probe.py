"""Linear-probe trials: cached features of the frozen backbone, a Linear head trained on them.

Trials of one cell that differ only in learning rate and seed can run as one packed sweep: the features are
read once and the heads train together (see head.py); a single trial is a sweep of one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from cytotune.config import TrialConfig
from cytotune.errors import CytotuneError
from cytotune.metric_names import BEST_VAL_ACC, LAST_STEP, STEP, TRAIN_LOSS, VAL_ACC
from cytotune.models.files import save_model_files
from cytotune.models.registry import get_backbone_spec
from cytotune.models.weights import resolve_weights
from cytotune.train.features import CachedFeatures, feature_request
from cytotune.train.head import HeadFit, HeadSchedule, fit_linear_heads
from cytotune.train.result import TrialResult
from cytotune.train.runtime import PeakMemory, resolve_device
from cytotune.train.scoring import scored_result
from cytotune.train.text_classifier import text_classifier, text_head
from cytotune.train.trial_data import TrialData, trial_manifest, trial_rows, write_trial_manifest

SweepReport = Callable[[int, dict], None]


def probe_features(cfg: TrialConfig, data: TrialData, device: torch.device) -> CachedFeatures:
    """Features of the trial's whole manifest, from the shared feature cache (computed once)."""
    return feature_request(cfg, data.manifest, device).cached()


def _check_one_cell(cfgs: Sequence[TrialConfig]) -> None:
    if not cfgs:
        raise CytotuneError("a probe sweep needs at least one trial")
    cell = {cfg.model_copy(update={"lr": 1.0, "seed": 0}) for cfg in cfgs}
    if len(cell) != 1 or cfgs[0].method != "linear_probe":
        raise CytotuneError(
            "a packed probe sweep takes linear-probe trials of one cell: expected them to differ in lr and "
            "seed only"
        )


def _schedule(cfg: TrialConfig) -> HeadSchedule:
    return HeadSchedule(
        lr=cfg.lr,
        weight_decay=cfg.train.weight_decay,
        batch_size=cfg.train.batch_size,
        epochs=cfg.train.probe_epochs,
        warmup_steps=cfg.train.warmup_steps,
        min_lr=cfg.train.min_lr,
    )


def probe_steps(cfg: TrialConfig, num_train: int) -> int:
    """Optimisation steps of a linear-probe trial on `num_train` training rows."""
    return _schedule(cfg).total_steps(num_train)


def _save_head(directory: Path, cfg: TrialConfig, classes: Sequence[str], fit: HeadFit) -> Path:
    """The probe's model files (cytotune.models.files): its chosen head, backbone and preprocessing."""
    spec = get_backbone_spec(cfg.backbone_ref)
    head = nn.Linear(spec.feature_dim, len(classes))
    with torch.no_grad():
        head.weight.copy_(fit.weight)
        head.bias.copy_(fit.bias)
    weights = resolve_weights(spec, cfg.weights)
    return save_model_files(directory, spec, weights, head, classes, cache_size=cfg.train.image_cache_size)


def run_probe_sweep(
    cfgs: Sequence[TrialConfig],
    report: SweepReport | None = None,
    out_dirs: Sequence[Path | None] | None = None,
) -> list[TrialResult]:
    """Train and evaluate linear-probe trials of one cell (differing in lr and seed only) together.

    `report(i, metrics)` is called for trial i at each epoch's evaluation. Each result equals what the trial
    gives alone (to float rounding); wall_s and images_per_s are its equal share of the sweep's time.
    """
    _check_one_cell(cfgs)
    start = time.perf_counter()
    cfg = cfgs[0]
    device = resolve_device(cfg.train.device)
    memory = PeakMemory(device)
    manifest = trial_manifest(cfg)
    datas = [trial_rows(c, manifest) for c in cfgs]
    if len({(len(d.train), len(d.val)) for d in datas}) != 1:
        raise CytotuneError("probe trials packed together must use train and val subsets of one size")
    cached = probe_features(cfg, datas[0], device)
    features = torch.from_numpy(cached.features).to(device)
    labels = datas[0].label_tensor().to(device)
    num_classes = len(manifest.classes)

    last_step = probe_steps(cfg, len(datas[0].train))

    def on_eval(k: int, step: int, train_loss: float, val_acc: float, best_val_acc: float) -> None:
        if report is not None:
            metrics = {STEP: step, LAST_STEP: last_step, TRAIN_LOSS: train_loss, VAL_ACC: val_acc}
            report(k, {**metrics, BEST_VAL_ACC: best_val_acc})

    def stacked(role: str) -> torch.Tensor:
        return torch.stack([torch.from_numpy(getattr(d, role)) for d in datas]).to(device)

    init = None
    if cfg.head_init == "text":
        classifier = text_classifier(cfg, list(manifest.classes))
        heads = [text_head(classifier, features[torch.from_numpy(d.train).to(device)]) for d in datas]
        init = torch.stack([torch.cat([w, b.unsqueeze(1)], 1) for w, b in heads])

    fits = fit_linear_heads(
        features,
        labels,
        stacked("train"),
        stacked("val"),
        num_classes,
        [_schedule(c) for c in cfgs],
        [torch.Generator().manual_seed(c.seed) for c in cfgs],
        on_eval=on_eval,
        where=[f"linear probe {c.backbone}/{c.dataset} lr={c.lr} seed={c.seed}" for c in cfgs],
        init=init,
    )
    test_probabilities, artifacts = [], []
    for index, (data, fit) in enumerate(zip(datas, fits, strict=True)):
        test_rows = torch.from_numpy(data.test).to(device)
        logits = features[test_rows] @ fit.weight.T + fit.bias
        test_probabilities.append(torch.softmax(logits.double(), 1).cpu().numpy())
        out_dir = out_dirs[index] if out_dirs is not None else None
        written = {}
        if out_dir is not None:
            written["trial_manifest.csv"] = write_trial_manifest(data, Path(out_dir) / "trial_manifest.csv")
            written["head"] = _save_head(Path(out_dir) / "head", cfgs[index], manifest.classes, fit)
        artifacts.append(written)
    share = len(cfgs)
    wall = (time.perf_counter() - start) / share
    return [
        scored_result(
            cfg,
            data,
            probabilities,
            best_val_acc=fit.best_val_acc,
            best_step=fit.best_step,
            trainable_params=fit.weight.numel() + fit.bias.numel(),
            total_params=cached.backbone_params + fit.weight.numel() + fit.bias.numel(),
            examples_seen=fit.examples_seen * share,
            train_seconds=fit.train_seconds,
            peak_mem_mb=memory.megabytes(),
            wall_s=wall,
            steps=fit.steps,
            artifacts=written,
        )
        for cfg, data, fit, probabilities, written in zip(
            cfgs, datas, fits, test_probabilities, artifacts, strict=True
        )
    ]


def run_linear_probe(
    cfg: TrialConfig, report: Callable[[dict, dict | None], None] | None = None, out_dir: Path | None = None
) -> TrialResult:
    """Train and evaluate one linear probe; `report(metrics, None)` at each epoch's evaluation."""
    sweep_report = None if report is None else (lambda _, metrics: report(metrics, None))
    return run_probe_sweep([cfg], sweep_report, [out_dir])[0]
