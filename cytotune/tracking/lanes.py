"""Calls run on background threads, in order within a lane, lanes in parallel: how the study's MLflow writer
keeps HTTP round trips off Ray Tune's controller loop while each run's writes stay in order."""

from __future__ import annotations

import sys
import threading
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor


class Lanes:
    """A pool of `threads` workers running submitted calls: calls of one lane one after another in the order
    submitted, different lanes at once. A call that raises is reported on stderr and its lane goes on."""

    def __init__(self, threads: int = 8, name: str = "cytotune-mlflow"):
        self._pool: ThreadPoolExecutor | None = None
        self._threads = threads
        self._name = name
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._queues: dict[Hashable, deque[Callable[[], None]]] = {}
        self._pending = 0

    def submit(self, lane: Hashable, call: Callable[[], None]) -> None:
        """Run `call` after every call submitted to `lane` before it."""
        with self._lock:
            self._pending += 1
            queue = self._queues.get(lane)
            if queue is not None:  # the lane is being drained: its worker takes this call too
                queue.append(call)
                return
            self._queues[lane] = deque([call])
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix=self._name)
            pool = self._pool
        pool.submit(self._drain, lane)

    def _drain(self, lane: Hashable) -> None:
        while True:
            with self._lock:
                queue = self._queues[lane]
                if not queue:
                    del self._queues[lane]
                    return
                call = queue[0]
            try:
                call()
            except Exception as err:  # noqa: BLE001  (a lane outlives one failed call; the caller's own
                # calls catch what they can retry)
                print(f"cytotune: a background MLflow write failed: {err!r}", file=sys.stderr)
            with self._lock:
                queue.popleft()
                self._pending -= 1
                if self._pending == 0:
                    self._idle.notify_all()

    def wait(self) -> None:
        """Block until every call submitted so far has run."""
        with self._lock:
            while self._pending:
                self._idle.wait()

    def close(self) -> None:
        """Wait for every call, then stop the workers (a later submit starts them again)."""
        self.wait()
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __getstate__(self) -> dict:
        """Pickled (with the callback, in Ray's run config) as a fresh, idle pool."""
        return {"_threads": self._threads, "_name": self._name}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["_threads"], state["_name"])
