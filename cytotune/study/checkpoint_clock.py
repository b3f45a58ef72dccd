"""When a running trial saves its trainer state: at most once every `checkpoint_every_s` seconds.

A trial reports every evaluation to Ray Tune; attaching its state to each report made Tune save the whole
experiment state each time a trial checkpointed `num_to_keep` times between two of its saves, which grows
with the square of the study's size. The clock keeps the resume point recent (a failed trial loses at most
that many seconds of training) while Tune's own snapshot period decides the rest. Imports nothing heavy: the
simulated trainable of `cytotune bench scale` uses it too.
"""

from __future__ import annotations

import time
from collections.abc import Callable

KEEP_CHECKPOINTS = 3  # per trial: a timed state, the one before it, and the final one with the artifacts


class CheckpointClock:
    """Says whether an evaluation's report carries the trainer's state: the first once `period_s` seconds
    passed since the trial started, then each time `period_s` passed since the last; with period 0, every
    evaluation."""

    def __init__(self, period_s: float, now: Callable[[], float] = time.monotonic):
        self.period_s = period_s
        self._now = now
        self._last = now()

    def due(self) -> bool:
        """Whether this evaluation saves a checkpoint (and restarts the clock when it does)."""
        now = self._now()
        if now - self._last < self.period_s:
            return False
        self._last = now
        return True
