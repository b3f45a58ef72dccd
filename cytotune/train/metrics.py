"""Classification metrics of one evaluation: accuracy, balanced accuracy, macro F1, recall, confusion."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClassificationMetrics:
    """Metrics of predictions against labels over a fixed list of classes.

    per_class_recall[c] is NaN for a class with no example; confusion[i][j] counts label i predicted as j.
    """

    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    per_class_recall: list[float]
    confusion: list[list[int]]


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (num_classes, num_classes): row = true label, column = predicted label."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    flat = labels * num_classes + predictions
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_metrics(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int
) -> ClassificationMetrics:
    """Accuracy, balanced accuracy (mean recall over classes present), macro F1 (over classes that occur as
    label or prediction, as scikit-learn does), per-class recall and the confusion matrix."""
    cm = confusion_matrix(labels, predictions, num_classes)
    total = int(cm.sum())
    if total == 0:
        raise ValueError("classification_metrics needs at least one prediction")
    correct = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, correct / support, np.nan)
        precision = np.where(predicted > 0, correct / predicted, 0.0)
        recall0 = np.nan_to_num(recall, nan=0.0)
        f1 = np.where(precision + recall0 > 0, 2 * precision * recall0 / (precision + recall0), 0.0)
    occurring = (support > 0) | (predicted > 0)
    return ClassificationMetrics(
        accuracy=float(correct.sum() / total),
        balanced_accuracy=float(np.nanmean(recall)),
        macro_f1=float(f1[occurring].mean()),
        per_class_recall=[float(r) for r in recall],
        confusion=cm.astype(int).tolist(),
    )
