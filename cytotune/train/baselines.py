"""Training-free baselines on the cached probe features: k nearest neighbours, SimpleShot and zero-shot.

knn: cosine similarity to the trial's train subset, a majority vote of the k nearest (ties to the lower
class index, as scikit-learn's KNeighborsClassifier); the class probabilities are the vote shares. k above
the train subset's size uses the whole subset.

simpleshot (Wang et al. 2019, "CL2N"): features centred with the mean of the trial's train subset, then
L2-normalised; each image goes to the nearest class mean (Euclidean) of the train subset. Probabilities are
the softmax of minus the squared distances (the prototypical-network reading of a nearest class mean).

zero_shot: a vision-language backbone's zero-shot classifier from class prompts (text_classifier.py);
probabilities are the softmax of CLIP's logits. It uses no train image.

None chooses anything on validation but knn's k, so their validation accuracy is that of the trial's k.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cytotune.config import TrialConfig
from cytotune.metric_names import BEST_VAL_ACC, STEP, VAL_ACC
from cytotune.train.linear_probe import probe_features
from cytotune.train.result import TrialResult
from cytotune.train.runtime import PeakMemory, resolve_device
from cytotune.train.scoring import scored_result
from cytotune.train.text_classifier import text_classifier, zero_shot_logits
from cytotune.train.trial_data import trial_data, write_trial_manifest

CHUNK = 1024
Scorer = Callable[[torch.Tensor], torch.Tensor]


def knn_probabilities(
    train: torch.Tensor, train_labels: torch.Tensor, query: torch.Tensor, k: int, num_classes: int
) -> torch.Tensor:
    """Vote shares (Q, C) of the k nearest train features by cosine similarity, for each query feature."""
    train = torch.nn.functional.normalize(train.double(), dim=1)
    k = min(k, len(train))
    out = []
    for lo in range(0, len(query), CHUNK):
        q = torch.nn.functional.normalize(query[lo : lo + CHUNK].double(), dim=1)
        nearest = (q @ train.T).topk(k, dim=1).indices
        votes = torch.nn.functional.one_hot(train_labels[nearest], num_classes).sum(1)
        out.append(votes.double() / k)
    return torch.cat(out)


def centred_normalised(features: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """SimpleShot's CL2N transform: subtract `mean`, then scale each row to unit L2 norm."""
    return torch.nn.functional.normalize(features.double() - mean, dim=1)


def simpleshot_probabilities(
    train: torch.Tensor, train_labels: torch.Tensor, query: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Softmax over classes of minus the squared distance (Q, C) from each CL2N query feature to the CL2N
    class means of the train features (centred with the train features' mean)."""
    mean = train.double().mean(0)
    train = centred_normalised(train, mean)
    one_hot = torch.nn.functional.one_hot(train_labels, num_classes).double()
    means = (one_hot.T @ train) / one_hot.sum(0).clamp(min=1).unsqueeze(1)
    present = one_hot.sum(0) > 0
    out = []
    for lo in range(0, len(query), CHUNK):
        q = centred_normalised(query[lo : lo + CHUNK], mean)
        distances = torch.cdist(q, means).square().masked_fill(~present, float("inf"))
        out.append(torch.softmax(-distances, 1))
    return torch.cat(out)


def run_baseline(
    cfg: TrialConfig, report: Callable[[dict, dict | None], None] | None = None, out_dir: Path | None = None
) -> TrialResult:
    """Evaluate one knn, simpleshot or zero_shot trial on the cached features of its backbone;
    `report(metrics, None)` once, with the validation accuracy."""
    start = time.perf_counter()
    device = resolve_device(cfg.train.device)
    memory = PeakMemory(device)
    data = trial_data(cfg)
    cached = probe_features(cfg, data, device)
    features = torch.from_numpy(cached.features).to(device)
    labels = data.label_tensor().to(device)
    num_classes = len(data.manifest.classes)
    train = torch.from_numpy(data.train).to(device)
    text = text_classifier(cfg, list(data.manifest.classes)) if cfg.method == "zero_shot" else None

    def probabilities(rows: np.ndarray) -> np.ndarray:
        query = features[torch.from_numpy(rows).to(device)]
        if text is not None:
            return torch.softmax(zero_shot_logits(query, text), 1).cpu().numpy()
        if cfg.method == "knn":
            return knn_probabilities(features[train], labels[train], query, cfg.k, num_classes).cpu().numpy()
        return simpleshot_probabilities(features[train], labels[train], query, num_classes).cpu().numpy()

    fit_start = time.perf_counter()
    val_acc = float((probabilities(data.val).argmax(1) == data.labels(data.val)).mean())
    fit_seconds = time.perf_counter() - fit_start
    if report is not None:
        report({STEP: 0, VAL_ACC: val_acc, BEST_VAL_ACC: val_acc}, None)
    artifacts = {}
    if out_dir is not None:
        artifacts["trial_manifest.csv"] = write_trial_manifest(data, Path(out_dir) / "trial_manifest.csv")
    return scored_result(
        cfg,
        data,
        probabilities(data.test),
        best_val_acc=val_acc,
        best_step=0,
        trainable_params=0,
        total_params=cached.backbone_params,
        examples_seen=len(data.val),
        train_seconds=fit_seconds,
        peak_mem_mb=memory.megabytes(),
        wall_s=time.perf_counter() - start,
        steps=0,
        artifacts=artifacts,
    )
