"""Safe files for shared caches: an inter-process lock, atomic writes, and a write-permission probe."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import BaseFileLock, FileLock, SoftFileLock, Timeout

from cytotune.errors import CytotuneError

SOFT_LOCKS = "CYTOTUNE_SOFT_LOCKS"
LOCK_TIMEOUT = "CYTOTUNE_LOCK_TIMEOUT"


def _lock_for(path: Path) -> BaseFileLock:
    """An OS lock (flock), or with CYTOTUNE_SOFT_LOCKS=1 a lock file's existence, for network file systems
    whose flock is not shared between machines (a crashed holder then leaves the file to delete by hand)."""
    timeout = float(os.environ.get(LOCK_TIMEOUT, "-1"))
    soft = os.environ.get(SOFT_LOCKS, "") not in ("", "0")
    return (SoftFileLock if soft else FileLock)(str(path), timeout=timeout)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) across processes; waits up to
    $CYTOTUNE_LOCK_TIMEOUT seconds (default: as long as it takes), then one line naming the lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = _lock_for(path)
    try:
        lock.acquire()
    except Timeout as err:
        raise CytotuneError(
            f"{path}: still locked by another process after {lock.timeout:g} s; expected it to be released "
            f"(raise ${LOCK_TIMEOUT}, or delete the file if its holder crashed under ${SOFT_LOCKS})"
        ) from err
    try:
        yield
    finally:
        lock.release()


def temporary_sibling(path: Path) -> Path:
    """A unique hidden name next to `path`, to write into before renaming onto `path`."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one."""
    tmp = temporary_sibling(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def is_writable_dir(path: Path) -> bool:
    """Whether files can be created in `path` (created if missing); tried for real, not guessed from modes."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = temporary_sibling(path / "probe")
        probe.touch()
        probe.unlink()
    except OSError:
        return False
    return True
