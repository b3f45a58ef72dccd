"""Where and how a trial runs: device choice, seeding, peak memory and the autocast precision."""

from __future__ import annotations

import contextlib
import random
import resource
import sys

import numpy as np
import torch


def resolve_device(setting: str) -> torch.device:
    """The torch device for a `train.device` setting: auto -> cuda when available, else cpu."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch (CPU and CUDA); return a CPU generator seeded with `seed`."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; float32 (no autocast) elsewhere."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def precision_name(device: torch.device) -> str:
    """The numeric precision the backbone runs in on `device` (part of the feature cache key)."""
    return "bf16" if device.type == "cuda" else "fp32"


class PeakMemory:
    """Peak memory of a trial: CUDA peak allocated on GPU (reset at start), process peak RSS on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def megabytes(self) -> float:
        """The peak so far, in MiB."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
