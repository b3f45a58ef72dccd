"""A live progress line for a running study: trials ended (finished, stopped, failed), running, best."""

from __future__ import annotations

import sys
import time
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from cytotune.tracking.schema import FAILED, FINISHED, STOPPED
from cytotune.train.result import BEST_VAL_ACC, DONE_TRIAL


def trial_status(ray_status: str, last_result: dict | None) -> str:
    """A trial's study status: finished (reached its end), stopped (early, by ASHA), failed, or unfinished."""
    if ray_status == Trial.ERROR:
        return FAILED
    if ray_status == Trial.TERMINATED:
        return FINISHED if (last_result or {}).get(DONE_TRIAL) == 1 else STOPPED
    return "unfinished"


class ProgressLine(Callback):
    """Prints one progress line on stderr as trials start and end (rewritten in place on a terminal)."""

    def __init__(self, total: int):
        self.total = total
        self.started = time.monotonic()

    def _show(self, trials: list[Trial]) -> None:
        counts = {FINISHED: 0, STOPPED: 0, FAILED: 0}
        running = 0
        best = None
        for trial in trials:
            status = trial_status(trial.status, trial.last_result)
            if trial.status == Trial.RUNNING:
                running += 1
            elif status in counts:
                counts[status] += 1
            value = (trial.last_result or {}).get(BEST_VAL_ACC)
            if value is not None:
                best = value if best is None else max(best, value)
        ended = sum(counts.values())
        line = (
            f"[{time.monotonic() - self.started:6.0f}s] {ended}/{self.total} trials ended "
            f"({counts[FINISHED]} finished, {counts[STOPPED]} stopped, {counts[FAILED]} failed), "
            f"{running} running" + ("" if best is None else f" | best val_acc {best:.4f}")
        )
        tty = getattr(sys.stderr, "isatty", lambda: False)()
        sys.stderr.write(("\r" + line) if tty else line + "\n")
        sys.stderr.flush()

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        """Show the line when a trial starts."""
        self._show(trials)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        """Show the line when a trial ends."""
        self._show(trials)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        """Show the line when a trial fails for good."""
        self._show(trials)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        """End the line."""
        if getattr(sys.stderr, "isatty", lambda: False)():
            sys.stderr.write("\n")
