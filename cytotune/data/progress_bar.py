"""Progress bars on a terminal (rich) and a thread pool for I/O- and decode-bound work."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")
R = TypeVar("R")


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr when it is a terminal, silent otherwise; yields `advance(n)`."""
    console = Console(stderr=True)
    if not console.is_terminal or total < 1:
        yield lambda n=1: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


def default_workers() -> int:
    """How many decode threads to use: the CPUs this process may run on, at most 16."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(16, cpus))


def map_with_progress(
    fn: Callable[[T], R], items: Sequence[T], description: str, workers: int | None = None
) -> list[R]:
    """`[fn(x) for x in items]` in order, on threads (Pillow and hashlib release the GIL), with progress."""
    workers = workers or default_workers()
    results: list[R] = []
    with progress_bar(description, len(items)) as advance:
        if workers == 1 or len(items) < 2 * workers:
            for item in items:
                results.append(fn(item))
                advance(1)
            return results
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cytotune-data")
        try:
            for result in pool.map(fn, items):
                results.append(result)
                advance(1)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return results
