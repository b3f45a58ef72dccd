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


def classification_metrics(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int
) -> ClassificationMetrics:
    """Accuracy, balanced accuracy (mean recall over classes present), macro F1 (over classes that occur as
    label or prediction), per-class recall and the confusion matrix, all from scikit-learn."""
    import sklearn.metrics as sk  # here: reading a study back (tracking.schema) need not load sklearn

    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    if labels.size == 0:
        raise ValueError("classification_metrics needs at least one prediction")
    cm = sk.confusion_matrix(labels, predictions, labels=np.arange(num_classes))
    support = cm.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, np.diag(cm) / support, np.nan)
    return ClassificationMetrics(
        accuracy=float(sk.accuracy_score(labels, predictions)),
        balanced_accuracy=float(sk.balanced_accuracy_score(labels, predictions)),
        macro_f1=float(sk.f1_score(labels, predictions, average="macro", zero_division=0.0)),
        per_class_recall=[float(r) for r in recall],
        confusion=cm.astype(int).tolist(),
    )
