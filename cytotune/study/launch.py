"""A launch of a study in its storage folder: one at a time (a lock), and what it was launched with (a record
read back by `--resume`: the study as loaded, its tracking store and storage)."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from filelock import FileLock, Timeout

from cytotune.errors import CytotuneError
from cytotune.study.grid import CellPlan
from cytotune.study.packs import ray_trial_count
from cytotune.study.spec import StudySpec

if TYPE_CHECKING:
    from cytotune.tracking.callback import MlflowCallback

LOCK_FILE = "launch.lock"
HOLDER_FILE = "launch.holder.json"
RECORD_FILE = "launch.json"
OWN_FILES = (LOCK_FILE, HOLDER_FILE, RECORD_FILE)


@dataclass(frozen=True)
class LaunchRecord:
    """What a study was launched with: the study as loaded (JSON), the tracking URI (None when the launch
    was given none) and the storage folder."""

    study: dict[str, Any]
    tracking_uri: str | None
    storage: str
    source: str | None = None

    def to_json(self) -> str:
        """The record as JSON text."""
        return json.dumps(self.__dict__, indent=1, sort_keys=True)


def study_fields(spec: StudySpec) -> dict[str, Any]:
    """The study as loaded, as JSON values (resolved paths, every default), compared between launches."""
    return json.loads(spec.model_dump_json())


def read_record(path: Path) -> LaunchRecord | None:
    """The record of the study stored at `path`, None when it has none."""
    file = path / RECORD_FILE
    if not file.is_file():
        return None
    try:
        return LaunchRecord(**json.loads(file.read_text()))
    except (ValueError, TypeError) as err:
        raise CytotuneError(f"{file}: unreadable launch record ({err}); expected cytotune's JSON") from err


def write_record(path: Path, record: LaunchRecord) -> None:
    """Write the launch record into the study's folder (atomically: a reader sees the old or the new one)."""
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / f".{RECORD_FILE}.{os.getpid()}"
    tmp.write_text(record.to_json())
    tmp.replace(path / RECORD_FILE)


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and any(isinstance(item, dict) for item in value):
        out = {}
        for index, item in enumerate(value):
            out.update(_flat(item, f"{prefix}[{index}]"))
        return out
    return {prefix: value}


def study_changes(launched: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The fields that differ between two studies, as 'field: launched -> now' (absent: 'unset')."""
    before, after = _flat(launched), _flat(now)
    changes = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key, "unset"), after.get(key, "unset")
        if old != new:
            changes.append(f"{key}: {json.dumps(old)} -> {json.dumps(new)}")
    return changes


def check_resumable(spec: StudySpec, record: LaunchRecord, path: Path) -> None:
    """Refuse to resume a study whose YAML changed since its launch: one line saying what changed."""
    changes = study_changes(record.study, study_fields(spec))
    if not changes:
        return
    shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
    raise CytotuneError(
        f"{spec.where()}: changed since study {spec.name} was launched into {path} ({shown}); expected the "
        f"YAML as launched, or a new study name (e.g. name: {spec.name}-2) to run it as a new study"
    )


def resume_tracking_uri(spec: StudySpec, path: Path, tracking_uri: str | None) -> str | None:
    """The tracking URI a resume must use: the one recorded at launch (a different one asked is refused);
    None when the study has no record (it is not resumable, or is launched afresh)."""
    record = read_record(path)
    if record is None or record.tracking_uri is None:
        return tracking_uri
    asked = tracking_uri or spec.tracking_uri
    if asked and asked != record.tracking_uri:
        raise CytotuneError(
            f"{spec.where()}: tracking URI {asked} asked, but study {spec.name} in {path} was launched with "
            f"{record.tracking_uri}; expected no --tracking-uri (the launch's is used) or that one"
        )
    return record.tracking_uri


@contextmanager
def launch_lock(path: Path, study: str) -> Iterator[None]:
    """Hold the study's launch lock for the block; a second launch is refused with one line naming the
    running one. The lock is an OS file lock: it goes with the process, so a crash leaves nothing stale."""
    path.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise CytotuneError(_running_line(path, study)) from None
    holder = path / HOLDER_FILE
    try:
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        holder.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": stamp}))
        yield
    finally:
        holder.unlink(missing_ok=True)
        lock.release()


def _running_line(path: Path, study: str) -> str:
    holder: dict[str, Any] = {}
    for _ in range(20):  # the holder file is written just after the lock is taken
        try:
            holder = json.loads((path / HOLDER_FILE).read_text())
            break
        except (OSError, ValueError):
            time.sleep(0.05)
    who = (
        f"host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started')}"
        if holder
        else "holder unknown"
    )
    return f"{path}: study {study} is already running ({who}); expected one launch of a study at a time"


def study_callback(
    spec: StudySpec,
    cells: list[CellPlan],
    tracking_uri: str,
    *,
    resume: bool = False,
    address: str | None = None,
    announcement: str | None = None,
) -> MlflowCallback:
    """The MLflow callback of a launch of `spec` (its planned `cells`, the same list the runner gets), writing
    to `tracking_uri`: the YAML as the user wrote it (the text load_study read, not the file again), the Ray
    trial count (a pack counts once) and the seeds of each cell recorded on the launch run; `announcement` is
    said on stderr when the launch starts (after the checks)."""
    from cytotune.tracking.pack_runs import PackedMlflowCallback

    text = spec.text or yaml.safe_dump(spec.model_dump(mode="json", exclude_unset=True), sort_keys=False)
    return PackedMlflowCallback(
        spec.name,
        tracking_uri,
        study_yaml=text,
        resume=resume,
        ray_address=address,
        expected_trials=ray_trial_count(cells),
        cell_seeds={cell.cell_key: len(cell.seeds) for cell in cells},
        announcement=announcement,
    )
