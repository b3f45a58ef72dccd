"""SIGINT and SIGTERM stop a study cleanly at any moment.

While Ray Tune runs the trials, the first signal asks Tune for its graceful stop (trials stopped, experiment
state saved, callbacks told): Tune listens on SIGUSR1 for that, and its own SIGINT handler is turned off so
that SIGINT and SIGTERM take the same way. Outside Tune (Ray start-up, preparing data, writing the summary),
and on a second signal, the signal raises `StudyInterrupted` where the program stands, so that `finally`
blocks shut Ray down and release the launch lock.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
TUNE_SIGINT = "TUNE_DISABLE_SIGINT_HANDLER"


class StudyInterrupted(BaseException):
    """A stop signal arrived outside Tune's graceful stop (a BaseException, like KeyboardInterrupt, so that
    no `except Exception` swallows it)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class StopSignals:
    """Catches SIGINT and SIGTERM for a study (a no-op outside the main thread): `received` holds the first
    signal; `exit_code` is 128 + its number (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._saved: dict[int, Any] = {}
        self._tune_idle: Any = None
        self._in_tune = False
        self._tune_env: str | None = None

    @property
    def active(self) -> bool:
        """Whether the handlers are installed (only the main thread can install them)."""
        return bool(self._saved)

    @property
    def exit_code(self) -> int | None:
        """128 + the number of the signal received, None when none came."""
        return None if self.received is None else 128 + self.received

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._tune_env = os.environ.get(TUNE_SIGINT)
            os.environ[TUNE_SIGINT] = "1"
            self._saved = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
            self.install()
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.active:
            return
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        self._saved = {}
        if self._tune_env is None:
            os.environ.pop(TUNE_SIGINT, None)
        else:
            os.environ[TUNE_SIGINT] = self._tune_env

    def install(self) -> None:
        """(Re)install the handlers; Ray's local start-up replaces the SIGTERM handler with its own."""
        if self.active:
            for signum in STOP_SIGNALS:
                signal.signal(signum, self._handle)

    def raise_if_received(self) -> None:
        """Raise StudyInterrupted when a signal came (e.g. while Ray's own handler was in place)."""
        if self.received is not None:
            raise StudyInterrupted(self.received)

    @contextmanager
    def tune_phase(self) -> Iterator[None]:
        """The block runs Ray Tune: a first signal asks Tune for its graceful stop instead of raising."""
        if not self.active or not hasattr(signal, "SIGUSR1"):
            yield
            return
        self._tune_idle = signal.getsignal(signal.SIGUSR1)
        self._in_tune = True
        try:
            yield
        finally:
            self._in_tune = False
            signal.signal(signal.SIGUSR1, self._tune_idle)  # Tune leaves its handler behind

    def _handle(self, signum: int, frame: Any) -> None:
        first = self.received is None
        if first:
            self.received = signum
        tune_stop = signal.getsignal(signal.SIGUSR1) if self._in_tune else None
        if first and callable(tune_stop) and tune_stop is not self._tune_idle:
            tune_stop(signal.SIGUSR1, frame)
            return
        raise StudyInterrupted(self.received or signum)
