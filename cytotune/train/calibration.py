"""Test-set evaluation from class probabilities: accuracy metrics, negative log-likelihood, expected
calibration error, reliability bins, and the per-image correctness that reports bootstrap over.

ECE uses equal-width confidence bins over the top-label probability (Guo et al. 2017): the weighted mean of
|accuracy - mean confidence| per bin. NLL is the mean of -log p(true class), probabilities clipped to
[eps, 1 - eps] with eps the float64 machine epsilon (as scikit-learn's log_loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cytotune.train.metrics import ClassificationMetrics, classification_metrics

ECE_BINS = 15


@dataclass(frozen=True)
class Evaluation:
    """A model's evaluation on the test rows: classification metrics, NLL, ECE, per-image correctness
    ("0"/"1" per test image, in test-row order) and reliability bins (count, confidence sum, correct sum)."""

    metrics: ClassificationMetrics
    nll: float
    ece: float
    correct: str
    reliability: dict[str, list[float]]


def negative_log_likelihood(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean -log p(true class) over examples; probabilities (N, C), rows summing to one."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    eps = np.finfo(np.float64).eps
    true = probabilities[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)]
    return float(-np.log(np.clip(true, eps, 1 - eps)).mean())


def reliability_bins(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS
) -> dict[str, list[float]]:
    """Per equal-width bin of top-label confidence ((k/bins, (k+1)/bins], the first also holding 0): the
    number of examples, the sum of their confidences and the number predicted correctly."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == np.asarray(labels)
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    return {
        "count": np.bincount(which, minlength=bins).astype(float).tolist(),
        "confidence": np.bincount(which, weights=confidence, minlength=bins).tolist(),
        "correct": np.bincount(which, weights=correct.astype(float), minlength=bins).tolist(),
    }


def expected_calibration_error(reliability: dict[str, list[float]]) -> float:
    """ECE from reliability bins: sum over bins of count/N * |accuracy - mean confidence|."""
    count = np.asarray(reliability["count"], dtype=np.float64)
    gap = np.abs(np.asarray(reliability["correct"]) - np.asarray(reliability["confidence"]))
    return float(gap.sum() / count.sum())


def correctness_string(labels: np.ndarray, predictions: np.ndarray) -> str:
    """Per-image correctness as a string of "0" and "1" (compact in result.json, exact to parse)."""
    hits = np.asarray(predictions) == np.asarray(labels)
    return "".join("1" if hit else "0" for hit in hits)


def parse_correctness(text: str) -> np.ndarray:
    """The boolean vector of a correctness string."""
    return np.frombuffer(text.encode("ascii"), dtype=np.uint8) == ord("1")


def evaluate_probabilities(labels: np.ndarray, probabilities: np.ndarray, num_classes: int) -> Evaluation:
    """Everything the test rows say about a model from its class probabilities (N, C)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predictions = probabilities.argmax(1)
    reliability = reliability_bins(labels, probabilities)
    return Evaluation(
        metrics=classification_metrics(labels, predictions, num_classes),
        nll=negative_log_likelihood(labels, probabilities),
        ece=expected_calibration_error(reliability),
        correct=correctness_string(labels, predictions),
        reliability=reliability,
    )
