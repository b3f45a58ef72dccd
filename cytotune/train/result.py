"""TrialResult: the final numbers of one trial (the contract between trainers and the study)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

SCALAR_FIELDS = (
    "best_val_acc",
    "best_step",
    "test_acc",
    "test_balanced_acc",
    "test_macro_f1",
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
    CPU.
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

    def metrics(self) -> dict[str, float]:
        """The scalar metrics, by name (what trackers log)."""
        return {name: float(getattr(self, name)) for name in SCALAR_FIELDS}

    def to_dict(self) -> dict:
        """Every field as plain JSON-able values (artifact paths as strings)."""
        data = asdict(self)
        data["artifacts"] = {name: str(path) for name, path in self.artifacts.items()}
        return data
