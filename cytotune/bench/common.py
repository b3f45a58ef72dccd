"""What the benchmarks share: the paper's sweep grid, timing (wall and CPU time, device-synchronised epochs)
and the commands' torch threads and work folder."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import torch

PAPER_LRS = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4)
PAPER_SEEDS = (1, 2, 3)

T = TypeVar("T")
B = TypeVar("B")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op off CUDA), so that a clock read next counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(work: Callable[[], T]) -> tuple[T, float, float]:
    """Run `work` once: its value, wall seconds and CPU seconds (time.process_time: every thread)."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = work()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def fastest_epoch(
    fn: Callable[[B], object], batches: Sequence[B], device: torch.device, repeats: int
) -> float:
    """Seconds of one epoch of `fn` over `batches`: the fastest of `repeats` epochs, after a warm-up batch."""
    fn(batches[0])
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        for batch in batches:
            fn(batch)
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return best


def set_threads(threads: int | None) -> None:
    """Use `threads` torch CPU threads; None keeps torch's choice."""
    if threads is not None:
        torch.set_num_threads(threads)


@contextmanager
def work_folder(work_dir: Path | None) -> Iterator[Path]:
    """`work_dir` when given (kept afterwards), else a temporary folder removed on exit."""
    if work_dir is not None:
        yield Path(work_dir)
        return
    with tempfile.TemporaryDirectory(prefix="cytotune-bench-") as tmp:
        yield Path(tmp)
