"""Safe files for shared caches: an inter-process lock, atomic writes, and a write-permission probe."""

from __future__ import annotations

import fcntl
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) across processes of this machine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
