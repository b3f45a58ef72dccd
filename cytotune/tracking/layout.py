"""The MLflow run layout of a study: tag names, statuses, metric names and the flattened trial parameters."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

from cytotune.config import TrialConfig
from cytotune.train.result import SCALAR_FIELDS

KIND = "cytotune.kind"
KIND_LAUNCH = "launch"
KIND_TRIAL = "trial"
STUDY = "cytotune.study"
YAML_SHA256 = "cytotune.yaml_sha256"
VERSION = "cytotune.version"
GIT_COMMIT = "cytotune.git_commit"
RAY_ADDRESS = "cytotune.ray_address"
RESUME = "cytotune.resume"
CELL_KEY = "cytotune.cell_key"
TRIAL_KEY = "cytotune.trial_key"
STATUS = "cytotune.status"
SEARCHED = "cytotune.searched"
RESOURCES = "cytotune.resources"
LAUNCHES = "cytotune.launch_ids"
ERROR = "cytotune.error"
RAY_TRIAL_ID = "ray.trial_id"
RAY_NODE_ID = "ray.node_id"
PARENT_RUN_ID = "mlflow.parentRunId"
RUN_NAME = "mlflow.runName"

RUNNING, FINISHED, STOPPED, FAILED = "running", "finished", "stopped", "failed"
STATUSES = (RUNNING, FINISHED, STOPPED, FAILED)
# MLflow run status for each cytotune status: an ASHA-stopped trial did not run its schedule, so it ends
# KILLED (its tag says "stopped"); it is kept, with the metrics it reached.
RUN_STATUS = {FINISHED: "FINISHED", STOPPED: "KILLED", FAILED: "FAILED"}

STEP_METRICS = ("train_loss", "val_acc", "best_val_acc")
FINAL_METRICS = SCALAR_FIELDS
STUDY_ARTIFACT = "study.yaml"
CELLS_ARTIFACT = "cells.json"  # on the launch run: seeds per cell key
TRIAL_ARTIFACT = "trial_config.json"
TAG_LIMIT = 5000


def flatten_trial(trial: dict[str, Any]) -> dict[str, str]:
    """A TrialConfig (as its JSON dict) as MLflow params: dotted names, lists joined by commas, None left out.

    LoRA settings are left out of linear-probe trials, where they mean nothing.
    """
    config = TrialConfig.model_validate(trial).model_dump(mode="json")
    if config["method"] != "lora":
        config.pop("lora")
    return dict(_flatten(config, ""))


def _flatten(value: Any, prefix: str):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}{key}" if not prefix else f"{prefix}.{key}")
    elif value is None:
        return
    elif isinstance(value, (list, tuple)):
        yield prefix, ",".join(str(item) for item in value)
    else:
        yield prefix, str(value)


def sha256_text(text: str) -> str:
    """Hex SHA-256 of a text (the study YAML)."""
    return hashlib.sha256(text.encode()).hexdigest()


def git_commit(path: Path | None = None) -> str | None:
    """The git commit of the checkout holding cytotune's code (or `path`), None outside a git checkout."""
    where = path or Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def clip_tag(text: str) -> str:
    """A text short enough for an MLflow tag value (the tail is kept: errors end with their cause)."""
    return text if len(text) <= TAG_LIMIT else "..." + text[-(TAG_LIMIT - 3) :]
