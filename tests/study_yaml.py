"""A study YAML written into a test's folder, and the one-line error a bad one gives."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cytotune.errors import CytotuneError
from cytotune.study.spec import StudySpec, load_study


def write(tmp_path: Path, text: str) -> Path:
    """`text` as tmp_path/space.yaml."""
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str, check: Callable[[StudySpec], object] = lambda spec: None) -> str:
    """The CytotuneError of loading the study YAML `text` (then of `check` on it), asserted to be one line
    naming the file; returned without the file's name."""
    with pytest.raises(CytotuneError) as err:
        check(load_study(write(tmp_path, text)))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(str(tmp_path / "space.yaml") + ": ")
    return message.split(": ", 1)[1]
