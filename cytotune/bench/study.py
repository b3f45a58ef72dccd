"""Ray overhead of a study: the demo's wall time against its trials' own time, with and without reuse."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cytotune.study.demo import run_demo


@dataclass(frozen=True)
class StudyBench:
    """One demo run: wall time, trials, the sum of their own time (trainable start to last report), slots."""

    reuse_actors: bool
    wall_s: float
    trials: int
    trial_s: float
    slots: int

    @property
    def overhead(self) -> float:
        """Wall time over the ideal (trials' own time spread over the parallel slots); 1.0 is no overhead."""
        return self.wall_s / (self.trial_s / self.slots) if self.trial_s > 0 else float("inf")

    def line(self) -> str:
        """One line of the benchmark table."""
        return (
            f"reuse_actors={str(self.reuse_actors).lower():5}  wall {self.wall_s:7.1f} s  "
            f"{self.trials} trials, "
            f"own time {self.trial_s:7.1f} s  wall/own {self.wall_s / self.trial_s:5.2f}  "
            f"overhead vs {self.slots} slots {self.overhead:5.2f}x"
        )


def bench_study(out_dir: Path, slots: int) -> list[StudyBench]:
    """Run the demo study twice (actor reuse off, then on) under out_dir and time each run."""
    rows = []
    for reuse in (False, True):
        outcome = run_demo(out_dir, reuse_actors=reuse, say=lambda _: None)
        own = sum(float(t.metrics.get("elapsed_s", 0.0)) for t in outcome.trials)
        rows.append(StudyBench(reuse, outcome.wall_s, len(outcome.trials), own, slots))
    return rows
