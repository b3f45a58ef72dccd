"""Learning-rate schedule of both trainers: linear warmup, then cosine decay to a floor."""

from __future__ import annotations

import math

import torch


def warmup_cosine_lr(
    step: int, *, base_lr: float, total_steps: int, warmup_steps: int, min_lr: float
) -> float:
    """Learning rate of optimisation step `step` (0-based) out of `total_steps`.

    Steps 0..warmup_steps-1 rise linearly to base_lr (step 0 uses base_lr / warmup_steps); the remaining steps
    follow a half cosine from base_lr down towards min_lr, reached at step total_steps.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_table(
    base_lrs: torch.Tensor, *, total_steps: int, warmup_steps: int, min_lr: float
) -> torch.Tensor:
    """Learning rates (total_steps, K) of every step for K base rates: warmup_cosine_lr, vectorised."""
    step = torch.arange(total_steps, dtype=torch.float64)[:, None]
    base = base_lrs.to(torch.float64)[None, :]
    warm = base * (step + 1) / max(warmup_steps, 1)
    progress = ((step - warmup_steps) / max(total_steps - warmup_steps, 1)).clamp(0.0, 1.0)
    cosine = min_lr + 0.5 * (base - min_lr) * (1.0 + torch.cos(math.pi * progress))
    return torch.where(step < warmup_steps, warm, cosine)
