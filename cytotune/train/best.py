"""The best-validation tracker: keeps, in memory, the state of the best evaluation seen so far."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def clone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detached copy of a dict of tensors, unaffected by further training."""
    return {name: tensor.detach().clone() for name, tensor in state.items()}


class BestTracker:
    """Best validation accuracy, its step and a snapshot of the trained state at that step.

    Only a strictly better accuracy replaces the best: on ties the earliest evaluation is kept.
    """

    def __init__(self) -> None:
        self.value = -math.inf
        self.step = -1
        self.state: dict[str, torch.Tensor] | None = None

    def update(self, step: int, value: float, snapshot: Callable[[], dict[str, torch.Tensor]]) -> bool:
        """Record the evaluation at `step`; when it is the best so far, keep `snapshot()` and return True."""
        if value > self.value:
            self.value = value
            self.step = step
            self.state = clone_state(snapshot())
            return True
        return False

    def state_dict(self) -> dict:
        """What a checkpoint needs to restore the tracker."""
        return {"value": self.value, "step": self.step, "state": self.state}

    def load_state_dict(self, saved: dict) -> None:
        """Restore the tracker from `state_dict()` output."""
        self.value = float(saved["value"])
        self.step = int(saved["step"])
        self.state = None if saved["state"] is None else clone_state(saved["state"])
