"""Trainers of one trial: linear probe on cached features and LoRA fine-tuning (no Ray, no MLflow)."""

from cytotune.train.linear_probe import run_probe_sweep
from cytotune.train.result import TrialResult
from cytotune.train.trial import run_trial

__all__ = ["TrialResult", "run_probe_sweep", "run_trial"]
