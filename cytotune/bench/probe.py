"""`cytotune bench probe`: what the feature cache buys a linear-probe sweep, measured side by side.

(a) one feature-extraction pass over the dataset; (b) a sweep of probes (learning rates x seeds) on cached
features, the extraction included, packed (the heads train together, run_probe_sweep) and as separate
run_trial calls; (c) the naive sweep that runs the frozen backbone in the training loop every epoch, timed
over a few epochs of one trial and extrapolated linearly to the sweep.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cytotune.bench.common import PAPER_LRS, PAPER_SEEDS, timed
from cytotune.config import TrainSettings, TrialConfig
from cytotune.data import open_eval_cache, prepare_dataset
from cytotune.data.synthetic import generate_synthetic
from cytotune.data.transforms import eval_transform
from cytotune.models import get_backbone_spec, load_backbone
from cytotune.train.features import extract_features
from cytotune.train.linear_probe import run_probe_sweep
from cytotune.train.runtime import autocast, resolve_device, seed_everything
from cytotune.train.schedule import warmup_cosine_lr
from cytotune.train.trial import run_trial
from cytotune.train.trial_data import TrialData, trial_data


@dataclass(frozen=True)
class ProbeBenchmark:
    """Seconds of (a) one extraction, (b) the cached sweep packed and as separate trials, (c) the naive
    sweep (extrapolated); and the setup."""

    backbone: str
    device: str
    images: int
    train_images: int
    trials: int
    epochs: int
    extraction_s: float
    sweep_s: float
    separate_s: float
    naive_s: float
    naive_measured_epochs: int
    naive_measured_s: float
    naive_val_acc: float

    @property
    def sweep_over_extraction(self) -> float:
        """(b) / (a) for the packed sweep: the target is at most 1.5."""
        return self.sweep_s / self.extraction_s

    @property
    def separate_over_extraction(self) -> float:
        """(b) / (a) for the sweep run as separate trials."""
        return self.separate_s / self.extraction_s

    @property
    def naive_over_sweep(self) -> float:
        """(c) / (b): how much the feature cache saves."""
        return self.naive_s / self.sweep_s

    def lines(self) -> list[str]:
        """The result as printable lines."""
        packed, separate = self.sweep_over_extraction, self.separate_over_extraction
        return [
            f"probe sweep benchmark: {self.backbone} on {self.device}, synthetic {self.images} images "
            f"({self.train_images} train), {self.trials} trials (5 lr x 3 seeds) x {self.epochs} epochs",
            f"(a) one feature extraction:            {self.extraction_s:8.2f} s",
            f"(b) sweep on cached features (incl. a): {self.sweep_s:8.2f} s  packed (heads train together)",
            f"    the same, as {self.trials} separate trials: {self.separate_s:8.2f} s",
            f"(c) naive sweep, backbone in the loop:  {self.naive_s:8.2f} s  (extrapolated linearly from "
            f"{self.naive_measured_epochs} epochs of one trial: {self.naive_measured_s:.2f} s)",
            f"(b)/(a) = {packed:.2f}x packed (target <= 1.5x), {separate:.2f}x as separate trials",
            f"(c)/(b) = {self.naive_over_sweep:.1f}x",
        ]


def naive_probe_epochs(
    cfg: TrialConfig, data: TrialData, device: torch.device, epochs: int
) -> tuple[float, float]:
    """Seconds of `epochs` epochs of a probe that forwards the frozen backbone over its batches every epoch
    (torch autograd + torch.optim.AdamW on an nn.Linear head), evaluating on val after each epoch, and the
    best validation accuracy it reached."""
    spec = get_backbone_spec(cfg.backbone_ref)
    generator = seed_everything(cfg.seed)
    backbone = load_backbone(cfg.backbone_ref, weights=cfg.weights).to(device).eval()
    images = open_eval_cache(data.manifest, spec.input_size, cfg.cache_dir)
    labels = data.label_tensor()
    head = nn.Linear(spec.feature_dim, len(data.manifest.classes)).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.train.weight_decay)
    batch = cfg.train.batch_size
    total = cfg.train.probe_epochs * int(np.ceil(len(data.train) / batch))

    def features(rows: np.ndarray) -> torch.Tensor:
        with torch.no_grad(), autocast(device):
            x = eval_transform(images.batch(rows).to(device), spec.input_size, spec.mean, spec.std)
            return backbone(x).float()

    step, best_val_acc = 0, 0.0
    start = time.perf_counter()
    for _ in range(epochs):
        order = data.train[torch.randperm(len(data.train), generator=generator).numpy()]
        for lo in range(0, len(order), batch):
            rows = order[lo : lo + batch]
            loss = nn.functional.cross_entropy(head(features(rows)), labels[rows].to(device))
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine_lr(
                    step,
                    base_lr=cfg.lr,
                    total_steps=total,
                    warmup_steps=cfg.train.warmup_steps,
                    min_lr=cfg.train.min_lr,
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        with torch.no_grad():
            val = [
                head(features(data.val[lo : lo + 256])).argmax(1).cpu() for lo in range(0, len(data.val), 256)
            ]
        best_val_acc = max(best_val_acc, float((torch.cat(val).numpy() == data.labels(data.val)).mean()))
    return time.perf_counter() - start, best_val_acc


def bench_probe(
    work_dir: Path,
    *,
    backbone: str = "tiny_clip",
    classes: int = 4,
    per_class: int = 250,
    image_size: int = 64,
    epochs: int = 100,
    lrs: tuple[float, ...] = PAPER_LRS,
    seeds: tuple[int, ...] = PAPER_SEEDS,
    naive_epochs: int = 2,
    device: str = "auto",
) -> ProbeBenchmark:
    """Time (a) one extraction, (b) a probe sweep on cached features, (c) the naive sweep, on a synthetic set
    generated under work_dir (the decoded-image cache is built first and shared by all three)."""
    root = generate_synthetic(
        Path(work_dir) / "data", classes=classes, per_class=per_class, size=image_size, seed=0
    )
    cache_dir = Path(work_dir) / "cache"
    settings = TrainSettings(probe_epochs=epochs, image_cache_size=image_size, device=device)
    base = TrialConfig(
        method="linear_probe",
        backbone=backbone,
        dataset="synthetic",
        root=root,
        lr=lrs[0],
        seed=seeds[0],
        train=settings,
        cache_dir=cache_dir,
    )
    torch_device = resolve_device(device)
    manifest = prepare_dataset("synthetic", root, cache_dir=cache_dir)
    extract = dict(cache_dir=cache_dir, batch_size=settings.eval_batch_size, device=torch_device)
    extract_features(manifest, backbone, None, **extract)
    _, extraction, _ = timed(lambda: extract_features(manifest, backbone, None, **extract))

    cfgs = [base.model_copy(update={"lr": lr, "seed": seed}) for lr in lrs for seed in seeds]
    shutil.rmtree(cache_dir / "features", ignore_errors=True)
    _, sweep, _ = timed(lambda: run_probe_sweep(cfgs))

    shutil.rmtree(cache_dir / "features", ignore_errors=True)
    _, separate, _ = timed(lambda: [run_trial(cfg) for cfg in cfgs])

    data = trial_data(base)
    measured, naive_val_acc = naive_probe_epochs(base, data, torch_device, naive_epochs)
    trials = len(cfgs)
    return ProbeBenchmark(
        backbone=backbone,
        device=str(torch_device),
        images=len(manifest),
        train_images=len(data.train),
        trials=trials,
        epochs=epochs,
        extraction_s=extraction,
        sweep_s=sweep,
        separate_s=separate,
        naive_s=measured / naive_epochs * epochs * trials,
        naive_measured_epochs=naive_epochs,
        naive_measured_s=measured,
        naive_val_acc=naive_val_acc,
    )
