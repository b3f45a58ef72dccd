"""A live progress line for a running study: trials ended (finished, stopped, failed), running, best."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from cytotune.metric_names import BEST_VAL_ACC, DONE_TRIAL
from cytotune.tracking.schema import FAILED, FINISHED, STOPPED


def trial_status(ray_status: str, last_result: dict | None) -> str:
    """A trial's study status: finished (reached its end), stopped (early, by ASHA), failed, or unfinished."""
    if ray_status == Trial.ERROR:
        return FAILED
    if ray_status == Trial.TERMINATED:
        return FINISHED if (last_result or {}).get(DONE_TRIAL) == 1 else STOPPED
    return "unfinished"


class ProgressLine(Callback):
    """Prints one progress line on stderr as trials start and end (rewritten in place on a terminal). Its
    counts follow the events, so a line costs the same at 10 trials and at 10,000; trials a resumed study
    ended before are counted once, at its first event."""

    def __init__(self, total: int):
        self.total = total
        self.started = time.monotonic()
        self._ended: dict[str, str] | None = None  # trial id -> finished, stopped or failed
        self._running: set[str] = set()
        self._best: float | None = None

    def _seen(self, trials: list[Trial]) -> dict[str, str]:
        if self._ended is None:
            self._ended = {}
            for trial in trials:
                status = trial_status(trial.status, trial.last_result)
                if status != "unfinished":
                    self._ended[trial.trial_id] = status
                    self._note_best(trial.last_result)
        return self._ended

    def _note_best(self, result: dict | None) -> None:
        value = (result or {}).get(BEST_VAL_ACC)
        if isinstance(value, (int, float)) and value == value:
            self._best = value if self._best is None else max(self._best, value)

    def _show(self, ended: dict[str, str]) -> None:
        counts = Counter(ended.values())
        line = (
            f"[{time.monotonic() - self.started:6.0f}s] {len(ended)}/{self.total} trials ended "
            f"({counts[FINISHED]} finished, {counts[STOPPED]} stopped, {counts[FAILED]} failed), "
            f"{len(self._running)} running"
            + ("" if self._best is None else f" | best val_acc {self._best:.4f}")
        )
        tty = getattr(sys.stderr, "isatty", lambda: False)()
        sys.stderr.write(("\r" + line) if tty else line + "\n")
        sys.stderr.flush()

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        """Show the line when a trial starts."""
        ended = self._seen(trials)
        ended.pop(trial.trial_id, None)
        self._running.add(trial.trial_id)
        self._show(ended)

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any
    ) -> None:
        """Follow the best validation accuracy (no line)."""
        self._note_best(result)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        """Show the line when a trial ends."""
        self._end(trials, trial, trial_status(Trial.TERMINATED, trial.last_result))

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        """Show the line when a trial fails for good."""
        self._end(trials, trial, FAILED)

    def _end(self, trials: list[Trial], trial: Trial, status: str) -> None:
        ended = self._seen(trials)
        ended[trial.trial_id] = status
        self._running.discard(trial.trial_id)
        self._show(ended)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        """End the line."""
        if getattr(sys.stderr, "isatty", lambda: False)():
            sys.stderr.write("\n")
