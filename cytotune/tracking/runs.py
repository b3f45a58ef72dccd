"""A study read back from MLflow: trial runs as a DataFrame, latest launch, expected seeds, best configs."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run

from cytotune.errors import CytotuneError
from cytotune.tracking import schema
from cytotune.tracking.run_records import RunRecord, search_pages, search_records
from cytotune.tracking.selection import select_best
from cytotune.tracking.uri import resolve_tracking_uri

TAG_COLUMNS = {
    schema.STATUS: "status",
    schema.CELL_KEY: "cell_key",
    schema.TRIAL_KEY: "trial_key",
    schema.RAY_TRIAL_ID: "ray_trial_id",
    schema.SEARCHED: "searched",
    schema.RESOURCES: "resources",
    schema.ERROR: "error",
    schema.PARENT_RUN_ID: "parent_run_id",
}
BASE_COLUMNS = ("run_id", "run_status", "start_time", "end_time", "artifact_uri", *TAG_COLUMNS.values())
READERS = 16  # artifacts read at once
WHOLE_LIMIT = 1e9  # below it, no other whole number is within filter_frame's tolerance of one


def experiment_id(client: MlflowClient, experiment: str) -> str:
    """The id of the experiment named `experiment`; CytotuneError naming the known ones when absent."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments() if e.name != "Default")
        known = ", ".join(names) if names else "none"
        raise CytotuneError(
            f"experiment {experiment!r} not found at {client.tracking_uri}; expected one of: {known}"
        )
    return found.experiment_id


def search_all(client: MlflowClient, experiment: str, filter_string: str, order_by: list[str] | None = None):
    """Every run of an experiment (by name) matching an MLflow filter string (all pages)."""
    return search_pages(client, [experiment_id(client, experiment)], filter_string, order_by)


def runs_frame(
    experiment: str,
    tracking_uri: str | None = None,
    where: str | Mapping[str, Any] | None = None,
    all_launches: bool = False,
) -> pd.DataFrame:
    """One row per trial run of a study: params (typed), cytotune tags, latest metrics and MLflow status.

    Columns: run_id, run_status (MLflow), start_time, end_time, artifact_uri, status, cell_key, trial_key,
    ray_trial_id, searched, resources, error, parent_run_id, then the params (backbone, lr, seed, lora.rank,
    ...) and the metrics (best_val_acc, test_acc, ...). A launch without --resume starts the study over, so
    only the runs of the latest such launch and of the launches resuming it are read (all runs with
    `all_launches`); a trial key with several runs keeps its latest. `where` keeps rows whose columns equal
    the given values ("dataset=sipakmed,shots=4" or a mapping); its params given as text or as a whole
    number of an integer field go into the search (`param_clauses`), so the tracking server reads and sends
    only the runs that can match.
    """
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    conditions = where_conditions(where) if where else {}
    trial_filter = f"tags.`{schema.KIND}` = '{schema.KIND_TRIAL}'"
    pushed = " AND ".join([trial_filter, *param_clauses(conditions)])
    runs = _trial_records(uri, client, experiment, pushed, all_launches)
    if not runs and pushed != trial_filter:  # nothing matched: read every run, so the filter can say why
        runs = _trial_records(uri, client, experiment, trial_filter, all_launches)
    frame = pd.DataFrame([_row(run) for run in runs])
    for column in BASE_COLUMNS:
        if column not in frame.columns:
            frame[column] = pd.Series(dtype=object)
    if not frame.empty:
        for column in ("start_time", "end_time"):
            frame[column] = pd.to_datetime(frame[column], unit="ms", utc=True)
        frame = frame.sort_values("start_time", kind="stable").drop_duplicates("trial_key", keep="last")
        frame = frame.sort_values("trial_key", kind="stable").reset_index(drop=True)
    frame = _typed(frame, params=sorted({name for run in runs for name in run.params}))
    return filter_frame(frame, conditions) if where else frame


def _trial_records(
    uri: str, client: MlflowClient, experiment: str, filter_string: str, all_launches: bool
) -> list[RunRecord]:
    """The trial runs matching the filter: of the current launches, or of all with `all_launches`."""
    runs = search_records(uri, experiment_id(client, experiment), filter_string)
    if not all_launches:
        current = current_launch_ids(client, experiment)
        runs = [run for run in runs if not current or current & launches_of(run)]
    return runs


def param_clauses(conditions: Mapping[str, Any]) -> list[str]:
    """MLflow filter clauses for the conditions a search can apply exactly, on params only (not a column of
    BASE_COLUMNS: those are tags and run info, which differ between runs of one trial key): a text that is
    not a number, or a whole number for a param that holds integers (schema.integer_params, written as
    "4"). Other numbers compare as numbers here ("0.01" as 1e-2), so they are filtered after the search.
    Every run of a trial key in a study's launches has the same params (a resume of a changed study is
    refused), so searching with them keeps the same latest run per trial key."""
    clauses = []
    for name, value in conditions.items():
        text = _searched_text(name, value)
        if text is not None and name not in BASE_COLUMNS and "`" not in name:
            clauses.append(f"params.`{name}` = '{text}'")
    return clauses


def _searched_text(name: str, value: Any) -> str | None:
    """The exact text a param `name` equal to `value` holds, where filter_frame keeps exactly that text
    (None: it compares numbers, and other spellings could match too)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value if isinstance(value, str) and "'" not in value else None
    whole = math.isfinite(number) and number.is_integer() and abs(number) < WHOLE_LIMIT
    return str(int(number)) if whole and name in schema.integer_params() else None


def current_launch_ids(client: MlflowClient, experiment: str) -> set[str]:
    """Ids of the latest launch made without --resume and of the launches after it (empty: no launch)."""
    filter_string = f"tags.`{schema.KIND}` = '{schema.KIND_LAUNCH}'"
    launches = search_all(client, experiment, filter_string, order_by=["attributes.start_time DESC"])
    current: set[str] = set()
    for launch in launches:
        current.add(launch.info.run_id)
        if launch.data.tags.get(schema.RESUME) != "true":
            break
    return current


def launches_of(run: RunRecord) -> set[str]:
    """The launches a trial run ran in: those in its launches tag, and the one it was made in."""
    tags = run.tags
    return {launch for launch in tags.get(schema.LAUNCHES, "").split(",") if launch} | {
        tags.get(schema.PARENT_RUN_ID, "")
    }


def _row(run: RunRecord) -> dict[str, Any]:
    row: dict[str, Any] = {
        "run_id": run.run_id,
        "run_status": run.status,
        "start_time": run.start_time,
        "end_time": run.end_time,
        "artifact_uri": run.artifact_uri,
    }
    row.update({column: run.tags.get(tag) for tag, column in TAG_COLUMNS.items()})
    row.update(run.params)
    row.update(run.metrics)
    return row


def _typed(frame: pd.DataFrame, params: list[str]) -> pd.DataFrame:
    for name in params:
        try:
            frame[name] = pd.to_numeric(frame[name])
        except (ValueError, TypeError):
            continue
    return frame


def parse_where(where: str) -> dict[str, str]:
    """`"dataset=sipakmed,shots=4"` as a mapping; a piece without "=" continues the previous value ("q,v")."""
    out: dict[str, str] = {}
    last = None
    for piece in (p.strip() for p in where.split(",")):
        if "=" in piece:
            key, _, value = piece.partition("=")
            last = key.strip()
            if not last:
                raise CytotuneError(
                    f"--where {where!r}: empty field name; expected FIELD=VALUE[,FIELD=VALUE]"
                )
            out[last] = value.strip()
        elif piece and last is not None:
            out[last] += "," + piece
        elif piece:
            raise CytotuneError(
                f"--where {where!r}: {piece!r} has no '='; expected FIELD=VALUE[,FIELD=VALUE]"
            )
    return out


def where_conditions(where: str | Mapping[str, Any]) -> dict[str, Any]:
    """The field -> value conditions of a --where text or mapping."""
    return parse_where(where) if isinstance(where, str) else dict(where)


def filter_frame(frame: pd.DataFrame, where: str | Mapping[str, Any]) -> pd.DataFrame:
    """The rows whose columns equal the given values (numbers compared as numbers)."""
    conditions = where_conditions(where)
    keep = pd.Series(True, index=frame.index)
    for name, value in conditions.items():
        if name not in frame.columns:
            known = ", ".join(sorted(map(str, frame.columns)))
            raise CytotuneError(f"--where: no field {name!r} in the runs; expected one of: {known}")
        column = frame[name]
        if pd.api.types.is_numeric_dtype(column):
            try:
                number = float(value)
            except ValueError as err:
                raise CytotuneError(f"--where: {name} is numeric; expected a number, got {value!r}") from err
            keep &= np.isclose(column.astype(float), number, rtol=1e-9, atol=0.0)
        else:
            keep &= column.astype(str) == str(value)
    return frame[keep].reset_index(drop=True)


def latest_launch(experiment: str, tracking_uri: str | None = None) -> Run:
    """The parent run of the study's most recent launch; CytotuneError when the study has none."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    filter_string = f"tags.`{schema.KIND}` = '{schema.KIND_LAUNCH}'"
    launches = search_all(client, experiment, filter_string, order_by=["attributes.start_time DESC"])
    if not launches:
        raise CytotuneError(
            f"experiment {experiment!r} has no launch run; expected one made by `cytotune run`"
        )
    return launches[0]


def read_artifact_text(client: MlflowClient, run_id: str, path: str) -> str:
    """The text of a small artifact of a run (downloaded quietly to a temporary folder)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp:
        return Path(client.download_artifacts(run_id, path, tmp)).read_text()


def read_artifact_texts(tracking_uri: str, artifact_uris: list[str], path: str) -> list[str | None]:
    """The text of the small file `path` under each run's artifact URI (None where it is missing or
    unreadable), READERS at a time, each in one request: the artifact repository's `_download_file` (the
    method every MLflow artifact repository implements) without download_artifacts' listing first."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from requests import RequestException

    def read(root: str) -> str | None:
        try:
            repository = get_artifact_repository(root, tracking_uri=tracking_uri)
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / Path(path).name
                repository._download_file(path, str(local))
                return local.read_text()
        except (OSError, MlflowException, RequestException):
            return None

    with ThreadPoolExecutor(READERS) as pool:
        return list(pool.map(read, artifact_uris))


def expected_seeds(experiment: str, tracking_uri: str | None = None) -> dict[str, int] | None:
    """Seeds per cell key as the latest launch recorded them (cells.json); None when it recorded none."""
    try:
        run = latest_launch(experiment, tracking_uri)
    except CytotuneError:
        return None
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    if schema.CELLS_ARTIFACT not in {item.path for item in client.list_artifacts(run.info.run_id)}:
        return None
    text = read_artifact_text(client, run.info.run_id, schema.CELLS_ARTIFACT)
    return {str(cell): int(seeds) for cell, seeds in json.loads(text).items()}


def searched_fields(frame: pd.DataFrame) -> tuple[str, ...]:
    """The searched fields named by the runs' tags (lr when none is recorded and the runs have an lr; none
    for studies that search nothing, e.g. simpleshot alone), lr first."""
    names = {
        name for value in frame.get("searched", pd.Series(dtype=object)).dropna() for name in value.split(",")
    }
    names.discard("")
    names = {name for name in names if name in frame.columns} or ({"lr"} & set(frame.columns))
    return tuple(sorted(names, key=lambda name: (name != "lr", name)))


def best_configs(
    experiment: str,
    tracking_uri: str | None = None,
    where: str | Mapping[str, Any] | None = None,
    frame: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """select_best over the study's runs (`frame`, else runs_frame read here), searched fields from the run
    tags (also in .attrs["searched"]), expected seeds from the study YAML of the latest launch."""
    frame = runs_frame(experiment, tracking_uri, where) if frame is None else frame
    searched = searched_fields(frame)
    best = select_best(frame, searched, expected_seeds(experiment, tracking_uri))
    best.attrs["searched"] = searched
    return best
