"""One linear-probe trial: cached features of the frozen backbone, a Linear head trained on them."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from cytotune.config import TrialConfig
from cytotune.train.features import CachedFeatures, cached_features
from cytotune.train.head import HeadSchedule, fit_linear_head
from cytotune.train.metrics import classification_metrics
from cytotune.train.result import TrialResult
from cytotune.train.runtime import PeakMemory, resolve_device, seed_everything
from cytotune.train.subsets import TrialData, trial_data, write_trial_manifest

Report = Callable[[dict, dict | None], None]


def probe_features(cfg: TrialConfig, data: TrialData, device: torch.device) -> CachedFeatures:
    """Features of the trial's whole manifest, from the shared feature cache (computed once)."""
    return cached_features(
        data.manifest,
        cfg.backbone,
        cfg.weights,
        image_size=cfg.train.image_cache_size,
        cache_dir=cfg.cache_dir,
        batch_size=cfg.train.eval_batch_size,
        device=device,
    )


def run_linear_probe(
    cfg: TrialConfig, report: Report | None = None, out_dir: Path | None = None
) -> TrialResult:
    """Train and evaluate one linear probe; `report(metrics, None)` at each epoch's evaluation."""
    start = time.perf_counter()
    device = resolve_device(cfg.train.device)
    memory = PeakMemory(device)
    generator = seed_everything(cfg.seed)
    data = trial_data(cfg)
    cached = probe_features(cfg, data, device)
    features = torch.from_numpy(cached.features).to(device)
    labels = data.label_tensor().to(device)
    num_classes = len(data.manifest.classes)

    def on_eval(step: int, train_loss: float, val_acc: float, best_val_acc: float) -> None:
        if report is not None:
            metrics = {
                "step": step,
                "train_loss": train_loss,
                "val_acc": val_acc,
                "best_val_acc": best_val_acc,
            }
            report(metrics, None)

    rows = {
        role: torch.from_numpy(idx).to(device) for role, idx in (("train", data.train), ("val", data.val))
    }
    schedule = HeadSchedule(
        lr=cfg.lr,
        weight_decay=cfg.train.weight_decay,
        batch_size=cfg.train.batch_size,
        epochs=cfg.train.probe_epochs,
        warmup_steps=cfg.train.warmup_steps,
        min_lr=cfg.train.min_lr,
    )
    fit = fit_linear_head(
        features[rows["train"]],
        labels[rows["train"]],
        features[rows["val"]],
        labels[rows["val"]],
        num_classes,
        schedule,
        generator,
        on_eval=on_eval,
        where=f"linear probe {cfg.backbone}/{cfg.dataset} lr={cfg.lr} seed={cfg.seed}",
    )
    test_rows = torch.from_numpy(data.test).to(device)
    predictions = (features[test_rows] @ fit.weight.T + fit.bias).argmax(1).cpu().numpy()
    test = classification_metrics(data.labels(data.test), predictions, num_classes)
    artifacts = {}
    if out_dir is not None:
        artifacts["trial_manifest.csv"] = write_trial_manifest(data, Path(out_dir) / "trial_manifest.csv")
    head_params = fit.weight.numel() + fit.bias.numel()
    return TrialResult(
        best_val_acc=fit.best_val_acc,
        best_step=fit.best_step,
        test_acc=test.accuracy,
        test_balanced_acc=test.balanced_accuracy,
        test_macro_f1=test.macro_f1,
        test_per_class_recall=test.per_class_recall,
        confusion_matrix=test.confusion,
        classes=list(data.manifest.classes),
        trainable_params=head_params,
        total_params=cached.backbone_params + head_params,
        images_per_s=fit.examples_seen / max(fit.train_seconds, 1e-9),
        peak_mem_mb=memory.megabytes(),
        wall_s=time.perf_counter() - start,
        steps=fit.steps,
        artifacts=artifacts,
    )
