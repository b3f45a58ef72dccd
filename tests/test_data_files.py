"""The shared caches' lock: exclusive across processes, bounded waits with one clear line, soft locks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cytotune.data.files import file_lock

PROBE = """
import sys
from cytotune.data.files import file_lock
from cytotune.errors import CytotuneError
try:
    with file_lock(__import__("pathlib").Path(sys.argv[1])):
        print("acquired")
except CytotuneError as err:
    print(err)
"""


def _try_from_another_process(path, **env) -> str:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CYTOTUNE_LOCK_TIMEOUT": "0.3", **env},
        check=True,
    )
    return result.stdout.strip()


@pytest.mark.parametrize("soft", ["0", "1"])
def test_a_held_lock_refuses_another_process_with_one_line_then_admits_it(tmp_path, monkeypatch, soft):
    monkeypatch.setenv("CYTOTUNE_SOFT_LOCKS", soft)
    path = tmp_path / "sub" / "features.lock"
    with file_lock(path):
        line = _try_from_another_process(path, CYTOTUNE_SOFT_LOCKS=soft)
    assert line.startswith(f"{path}: still locked by another process after 0.3 s")
    assert "\n" not in line
    assert _try_from_another_process(path, CYTOTUNE_SOFT_LOCKS=soft) == "acquired"
