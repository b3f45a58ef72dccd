"""A trial's test-set fields from its class probabilities: metrics, calibration, per-image correctness and,
on a hierarchical dataset, the accuracy at each level up to the trial's own (predictions mapped up the
tree); and the TrialResult every trainer returns, built from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cytotune.config import TrialConfig
from cytotune.data.hierarchy import class_tree
from cytotune.train.calibration import evaluate_probabilities
from cytotune.train.result import TrialResult
from cytotune.train.trial_data import TrialData


def level_accuracies(
    tree: dict[str, dict[int, str]],
    classes: list[str],
    level: int,
    labels: np.ndarray,
    predictions: np.ndarray,
) -> dict[str, float]:
    """test_acc_level1 .. test_acc_level{level}: accuracy once labels and predictions (class indices) are
    replaced by their ancestors at each level (the trial's own level: plain accuracy)."""
    out = {}
    for coarse in range(1, level + 1):
        names = np.array([tree[c][coarse] if coarse < level else c for c in classes])
        out[f"test_acc_level{coarse}"] = float((names[labels] == names[predictions]).mean())
    return out


def score_test_rows(cfg: TrialConfig, data: TrialData, probabilities: np.ndarray) -> dict:
    """TrialResult's test fields for probabilities (test rows x classes) of the trial's test rows."""
    labels = data.labels(data.test)
    classes = list(data.manifest.classes)
    fields = TrialResult.test_fields(evaluate_probabilities(labels, probabilities, len(classes)))
    tree = class_tree(cfg.dataset, cfg.root, cfg.level)
    if tree is not None:
        fields.update(level_accuracies(tree, classes, cfg.level, labels, np.asarray(probabilities).argmax(1)))
    return fields


def scored_result(
    cfg: TrialConfig,
    data: TrialData,
    probabilities: np.ndarray,
    *,
    best_val_acc: float,
    best_step: int,
    trainable_params: int,
    total_params: int,
    examples_seen: float,
    train_seconds: float,
    peak_mem_mb: float,
    wall_s: float,
    steps: int,
    artifacts: dict[str, Path],
) -> TrialResult:
    """A trained trial's TrialResult: its test rows scored from `probabilities` (test rows x classes) and its
    training throughput, examples seen per second of training."""
    return TrialResult(
        best_val_acc=best_val_acc,
        best_step=best_step,
        **score_test_rows(cfg, data, probabilities),
        classes=list(data.manifest.classes),
        trainable_params=trainable_params,
        total_params=total_params,
        images_per_s=examples_seen / max(train_seconds, 1e-9),
        peak_mem_mb=peak_mem_mb,
        wall_s=wall_s,
        steps=steps,
        artifacts=artifacts,
    )
