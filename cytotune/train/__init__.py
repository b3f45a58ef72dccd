"""Trainers of one trial: linear probe on cached features and LoRA fine-tuning (no Ray, no MLflow)."""

from cytotune.train.result import TrialResult
from cytotune.train.trial import run_trial

__all__ = ["TrialResult", "run_trial"]
