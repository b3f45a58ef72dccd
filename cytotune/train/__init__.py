"""Trainers of one trial: linear probe on cached features and LoRA fine-tuning (no Ray, no MLflow).

The trainers load on first use, so what only needs the result's fields (tracking, `cytotune best`) does not
import torch and the model libraries."""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "run_probe_sweep": "cytotune.train.linear_probe",
    "TrialResult": "cytotune.train.result",
    "run_trial": "cytotune.train.trial",
}

__all__ = ["TrialResult", "run_probe_sweep", "run_trial"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
