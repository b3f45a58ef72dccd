"""The MLflow run schema of a study: tag names, statuses, metric names and the flattened trial parameters."""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag
from pydantic import BaseModel

from cytotune.config import TrialConfig
from cytotune.metric_names import BEST_VAL_ACC, TRAIN_LOSS, VAL_ACC
from cytotune.train.result import SCALAR_FIELDS

KIND = "cytotune.kind"
KIND_LAUNCH = "launch"
KIND_TRIAL = "trial"
KIND_PACK = "pack"  # the Ray trial of a packed cell; its trials are its child runs, of kind trial
PACK_ARTIFACT = "pack.json"  # on a pack run: the trial keys of its trials, in pack order
# A pack's Ray trial: its config lists its trials' Ray configs under PACK_KEY; its reports carry the metrics
# of the trials evaluated then under PACK_RESULTS, its last report each trial's end under PACK_FINAL
PACK_KEY = "pack"
PACK_RESULTS = "pack_results"
PACK_FINAL = "pack_final"
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

STEP_METRICS = (TRAIN_LOSS, VAL_ACC, BEST_VAL_ACC)
FINAL_METRICS = SCALAR_FIELDS
STUDY_ARTIFACT = "study.yaml"
CELLS_ARTIFACT = "cells.json"  # on the launch run: seeds per cell key
TRIAL_ARTIFACT = "trial_config.json"
TAG_LIMIT = 5000
DATASET_DIGEST = "dataset_digest"  # param, and the trial result field the trainable reports it in
INPUT_DIGEST_CHARS = 16  # MLflow keeps at most 36 characters of a dataset digest; the param has all 40
DATASET_FIELDS = (
    "dataset_name",
    DATASET_DIGEST,
    "dataset_root",
    "dataset_train",
    "dataset_val",
    "dataset_test",
)


def is_pack_config(config: dict[str, Any]) -> bool:
    """Whether a Ray trial config is a pack's (a packed cell's one Ray trial)."""
    return PACK_KEY in config


@dataclass(frozen=True)
class CellKey:
    """The parts of a cell key (the CELL_KEY tag; written by study.grid.cell_key): the method block's label,
    backbone, dataset label, data budget (shots=k, fraction=p or full) and, for LoRA, its fixed settings
    ("rank=2,targets=qv"; "" otherwise)."""

    block: str
    backbone: str
    dataset: str
    budget: str
    settings: str


def parse_cell_key(key: str) -> CellKey:
    """A cell key's parts."""
    block, backbone, dataset, budget, *settings = key.split("/")
    return CellKey(block, backbone, dataset, budget, "/".join(settings))


def flatten_trial(trial: TrialConfig) -> dict[str, str]:
    """A TrialConfig as MLflow params: dotted names, lists joined by commas, None left out.

    LoRA settings are left out of linear-probe trials, where they mean nothing; class prompts are one JSON
    param (class names need not be valid MLflow keys).
    """
    config = trial.model_dump(mode="json")
    if config["method"] != "lora":
        config.pop("lora")
    if config["prompts"] is not None:
        config["prompts"] = json.dumps(config["prompts"], sort_keys=True)
    return dict(_flatten(config, ""))


@functools.cache
def integer_params() -> frozenset[str]:
    """The params of flatten_trial that hold integers (a TrialConfig field typed int, optional int or a
    choice of ints, at any depth): each is written as str() of a Python int, "4", never "4.0"."""
    return frozenset(_integer_fields(TrialConfig, ""))


def _integer_fields(model: type[BaseModel], prefix: str):
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            kinds = [kind for kind in typing.get_args(annotation) if kind is not type(None)]
            annotation = kinds[0] if len(kinds) == 1 else None
        choices = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else None
        if annotation is int or (choices and all(type(choice) is int for choice in choices)):
            yield prefix + name
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _integer_fields(annotation, f"{prefix}{name}.")


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


def source_tags() -> dict[str, str]:
    """MLflow's standard source tags for this process: mlflow.user, mlflow.source.name and .type (from
    MLflow's own context providers) and mlflow.source.git.commit of the checkout holding cytotune."""
    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils.mlflow_tags import (
        MLFLOW_GIT_COMMIT,
        MLFLOW_SOURCE_NAME,
        MLFLOW_SOURCE_TYPE,
        MLFLOW_USER,
    )

    resolved = resolve_tags()
    names = (MLFLOW_USER, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE, MLFLOW_GIT_COMMIT)
    tags = {name: resolved[name] for name in names if resolved.get(name)}
    if tags.get(MLFLOW_SOURCE_NAME, "-") == "-":  # python -c or a notebook: name the program instead
        tags[MLFLOW_SOURCE_NAME] = "cytotune"
    commit = git_commit()
    if commit:
        tags[MLFLOW_GIT_COMMIT] = commit
    return tags


def dataset_input(result: dict[str, Any]) -> DatasetInput:
    """The dataset a trial saw, as an MLflow run input: name and manifest digest (its first 16 characters),
    the root as its source, images per split (train as sampled by the trial) as its profile."""
    source = json.dumps({"uri": Path(result["dataset_root"]).resolve().as_uri()})
    profile = json.dumps({split: int(result[f"dataset_{split}"]) for split in ("train", "val", "test")})
    digest = result[DATASET_DIGEST][:INPUT_DIGEST_CHARS]
    dataset = Dataset(result["dataset_name"], digest, "local", source, profile=profile)
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "trial")])


def clip_tag(text: str) -> str:
    """A text short enough for an MLflow tag value (the tail is kept: errors end with their cause)."""
    return text if len(text) <= TAG_LIMIT else "..." + text[-(TAG_LIMIT - 3) :]
