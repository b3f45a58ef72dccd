"""TrialResult: the final numbers of one trial (the contract between trainers and the study)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cytotune.metric_names import (
    BEST_VAL_ACC,
    TEST_ACC,
    TEST_BALANCED_ACC,
    TEST_ECE,
    TEST_MACRO_F1,
    TEST_NLL,
)
from cytotune.train.calibration import Evaluation

SCALAR_FIELDS = (
    BEST_VAL_ACC,
    "best_step",
    TEST_ACC,
    TEST_BALANCED_ACC,
    TEST_MACRO_F1,
    TEST_NLL,
    TEST_ECE,
    "test_acc_level1",
    "test_acc_level2",
    "test_acc_level3",
    "trainable_params",
    "total_params",
    "images_per_s",
    "peak_mem_mb",
    "wall_s",
    "steps",
)


@dataclass
class TrialResult:
    """Final metrics of one trial; test numbers are taken at the best-validation step.

    images_per_s counts training examples per second of the training loop (cached feature vectors for the
    linear probe, augmented images for LoRA); peak_mem_mb is the CUDA peak on GPU or the process peak RSS on
    CPU. test_nll and test_ece are the test negative log-likelihood and expected calibration error;
    test_correct holds "0"/"1" per test image in test-row order (reports bootstrap over it) and
    test_reliability the confidence bins (see calibration.py). On a hierarchical dataset (HiCervix),
    test_acc_level{n} is the accuracy at each level up to the trial's own, predictions mapped up the class
    tree; NaN elsewhere.
    """

    best_val_acc: float
    best_step: int
    test_acc: float
    test_balanced_acc: float
    test_macro_f1: float
    test_per_class_recall: list[float]
    confusion_matrix: list[list[int]]
    classes: list[str]
    trainable_params: int
    total_params: int
    images_per_s: float
    peak_mem_mb: float
    wall_s: float
    steps: int
    artifacts: dict[str, Path] = field(default_factory=dict)
    test_nll: float = math.nan
    test_ece: float = math.nan
    test_correct: str = ""
    test_reliability: dict[str, list[float]] = field(default_factory=dict)
    test_acc_level1: float = math.nan
    test_acc_level2: float = math.nan
    test_acc_level3: float = math.nan

    def metrics(self) -> dict[str, float]:
        """The scalar metrics, by name (what trackers log)."""
        return {name: float(getattr(self, name)) for name in SCALAR_FIELDS}

    @staticmethod
    def test_fields(test: Evaluation) -> dict:
        """The keyword arguments of the test-set fields, from a test evaluation."""
        return {
            TEST_ACC: test.metrics.accuracy,
            TEST_BALANCED_ACC: test.metrics.balanced_accuracy,
            TEST_MACRO_F1: test.metrics.macro_f1,
            "test_per_class_recall": test.metrics.per_class_recall,
            "confusion_matrix": test.metrics.confusion,
            TEST_NLL: test.nll,
            TEST_ECE: test.ece,
            "test_correct": test.correct,
            "test_reliability": test.reliability,
        }

    def to_dict(self) -> dict:
        """Every field as plain JSON-able values (artifact paths as strings)."""
        data = asdict(self)
        data["artifacts"] = {name: str(path) for name, path in self.artifacts.items()}
        return data
