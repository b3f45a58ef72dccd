"""TrialResult: the final numbers of one trial, and the names of what trials report (the contract between
trainers, the study and its tracking)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cytotune.train.calibration import Evaluation

# What a trainer reports at each evaluation: the step, the last step of its schedule (LoRA and the probe),
# the mean train loss since the last report, the validation accuracy and the best one so far.
STEP = "step"
LAST_STEP = "last_step"
TRAIN_LOSS = "train_loss"
VAL_ACC = "val_acc"
BEST_VAL_ACC = "best_val_acc"
# 1 in the study's final report of a trial that ran its whole schedule (the report with the final metrics).
DONE_TRIAL = "done_trial"
# Final test metrics, at the best-validation step (TrialResult's fields of the same names).
TEST_ACC = "test_acc"
TEST_BALANCED_ACC = "test_balanced_acc"
TEST_MACRO_F1 = "test_macro_f1"
TEST_NLL = "test_nll"
TEST_ECE = "test_ece"
# What a study maximises: VAL_ACC as trials report it (the searcher and the scheduler watch it); selection
# compares BEST_VAL_ACC, the best each trial reached, averaged over seeds.
OBJECTIVE = VAL_ACC
OBJECTIVE_MODE = "max"

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
