"""Trial ends the driver has not yet written to MLflow, kept in a local file so a killed driver loses none.

The MLflow callback writes on background lanes, so a trial's end (its last metrics, its status tag, the end
of its run) reaches MLflow some time after Ray Tune learns of it: under load, tens of ends behind. A driver
killed in that window loses those ends, and on resume Tune trains their trials again. So the callback
appends each end to this journal first, in Tune's thread: one JSON line (the run's unwritten metrics,
params and tags, its status, the final checkpoint to upload, and how to make the run when even its creation
was still queued: a one-second trial can end before its run exists), written and flushed to the operating
system, which keeps it when the driver process dies (not when the machine does). When Tune snapshots its
experiment every write has finished, and the journal keeps only the ends MLflow refused. On resume the lines
left are written to their runs before the replays are read (tracking/replay.py), so those trials replay
their end.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from mlflow.entities import Metric, Param, RunTag


@dataclass(frozen=True)
class TrialEnd:
    """One end: the run (id, when it was known; else found by trial key among the study's current launches,
    else made from `create`), MLflow status to end it with, its unwritten metrics (name, value, timestamp,
    step), params and tags (the status tag last), the final checkpoint's files (path, filesystem) for a
    finished trial, and what a new run of the trial starts with (tags, and the trial config as a dict)."""

    key: str
    trial_key: str
    cell_key: str
    launch: str | None
    run_id: str | None
    run_status: str
    metrics: list[tuple[str, float, int, int]]
    params: list[tuple[str, str]]
    tags: list[tuple[str, str]]
    files: tuple[str, str] | None = field(default=None)
    create: dict[str, Any] | None = field(default=None)

    def batch(self) -> tuple[list[Metric], list[Param], list[RunTag]]:
        """Its writes as MLflow entities."""
        return (
            [Metric(*m) for m in self.metrics],
            [Param(*p) for p in self.params],
            [RunTag(*t) for t in self.tags],
        )


def trial_end(
    key: str,
    config: dict[str, Any],
    launch: str | None,
    run_id: str | None,
    run_status: str,
    batch: tuple[list[Metric], list[Param], list[RunTag]],
    files: tuple[str, str] | None = None,
    create: dict[str, Any] | None = None,
) -> TrialEnd:
    """The end of the trial (or pack) `key` whose Ray config is `config`, from its unwritten buffer."""
    metrics, params, tags = batch
    return TrialEnd(
        key=key,
        trial_key=config["trial_key"],
        cell_key=config["cell_key"],
        launch=launch,
        run_id=run_id,
        run_status=run_status,
        metrics=[(m.key, m.value, m.timestamp, m.step) for m in metrics],
        params=[(p.key, p.value) for p in params],
        tags=[(t.key, t.value) for t in tags],
        files=files,
        create=create,
    )


def encode(end: TrialEnd) -> str:
    """One journal line (NaN and infinities as JSON's extensions, which `decode` reads back)."""
    return json.dumps(vars(end), separators=(",", ":")) + "\n"


def decode(line: str) -> TrialEnd | None:
    """The end of a journal line; None for a line cut short (the driver died while writing it)."""
    try:
        raw = json.loads(line)
    except json.JSONDecodeError:
        return None
    files = raw.pop("files", None)
    return TrialEnd(
        **{k: raw[k] for k in ("key", "trial_key", "cell_key", "launch", "run_id", "run_status")},
        metrics=[tuple(m) for m in raw["metrics"]],
        params=[tuple(p) for p in raw["params"]],
        tags=[tuple(t) for t in raw["tags"]],
        files=tuple(files) if files else None,
        create=raw.get("create"),
    )


class EndJournal:
    """The journal file of one study (in its driver folder): ends appended as they happen, the written ones
    dropped at each snapshot, the rest read back on resume."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lines: dict[str, str] = {}  # key -> line of an end not yet written to MLflow
        self._file: TextIO | None = None
        self._stale = False  # the file holds ends written since it was last rewritten

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (with the callback, in Ray's run config) without its open file."""
        return {"path": self.path, "_lines": {}, "_file": None, "_stale": False}

    def append(self, end: TrialEnd) -> None:
        """Record an end before its writes are queued (flushed to the operating system at once)."""
        line = encode(end)
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a")
        self._file.write(line)
        self._file.flush()
        self._lines[end.key] = line

    def written(self, key: str) -> None:
        """MLflow holds the end of `key` (a lane's thread)."""
        if self._lines.pop(key, None) is not None:
            self._stale = True

    def compact(self) -> None:
        """Keep only the ends not yet written (call when no write is in flight): a new file, swapped in."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if not self._stale:
            return
        self._stale = False
        kept = "".join(self._lines.values())
        if not kept:
            self.path.unlink(missing_ok=True)
            return
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(kept)
        os.replace(partial, self.path)

    def read(self) -> list[TrialEnd]:
        """The ends the file holds, the latest per key (a line cut short is skipped)."""
        if not self.path.is_file():
            return []
        ends = {end.key: end for end in map(decode, self.path.read_text().splitlines()) if end is not None}
        return list(ends.values())

    def clear(self) -> None:
        """Forget every end (on resume, once they were written to their runs)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._lines.clear()
        self._stale = False
        self.path.unlink(missing_ok=True)
