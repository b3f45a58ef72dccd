"""The checkpoint clock: when a running trial's report carries its state."""

from __future__ import annotations

from cytotune.study.checkpoint_clock import CheckpointClock


class Ticks:
    """A hand-set monotonic clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_period_zero_checkpoints_every_evaluation():
    ticks = Ticks()
    clock = CheckpointClock(0.0, now=ticks)
    assert [clock.due() for _ in range(4)] == [True] * 4


def test_first_checkpoint_after_one_period_then_one_per_period_since_the_last():
    ticks = Ticks()
    clock = CheckpointClock(60.0, now=ticks)
    due = []
    for at in (10.0, 59.9, 60.0, 61.0, 119.9, 125.0, 184.9, 185.0):
        ticks.now = 100.0 + at
        due.append((at, clock.due()))
    # 60 s after the start; then 60 s after that checkpoint (120 would be due, 125 is the first evaluation
    # after it); then 60 s after 125
    assert [at for at, yes in due if yes] == [60.0, 125.0, 185.0]
