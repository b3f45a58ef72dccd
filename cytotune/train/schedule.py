"""Learning-rate schedule of both trainers: linear warmup, then cosine decay to a floor."""

from __future__ import annotations

import math


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
