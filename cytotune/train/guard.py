"""The non-finite loss guard: a NaN or infinite loss ends a trial with an error, never a silent zero."""

from __future__ import annotations

import math

from cytotune.errors import CytotuneError


def ensure_finite_loss(loss: float, step: int, where: str) -> None:
    """Raise CytotuneError when `loss` is NaN or infinite, naming the step and the trial (`where`)."""
    if not math.isfinite(loss):
        raise CytotuneError(
            f"{where}: training loss is {loss} at step {step}; expected a finite loss "
            "(lower the learning rate or check the data)"
        )
