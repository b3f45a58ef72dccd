"""MLflow tracking of studies: run layout (cytotune.tracking.callback), queries, selection."""

from cytotune.tracking.probes import mark_absent_probes
from cytotune.tracking.runs import best_configs, expected_seeds, latest_launch, parse_where, runs_frame
from cytotune.tracking.selection import select_best
from cytotune.tracking.uri import (
    check_tracking,
    choose_tracking_uri,
    default_tracking_uri,
    resolve_tracking_uri,
)

mark_absent_probes()  # once a process, before any MLflow request (probes.py)

__all__ = [
    "best_configs",
    "check_tracking",
    "choose_tracking_uri",
    "default_tracking_uri",
    "expected_seeds",
    "latest_launch",
    "parse_where",
    "resolve_tracking_uri",
    "runs_frame",
    "select_best",
]
