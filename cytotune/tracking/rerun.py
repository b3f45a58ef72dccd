"""A study YAML that reruns exactly the chosen configuration of each cell (e.g. with more seeds)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from cytotune.config import TrialConfig
from cytotune.errors import CytotuneError
from cytotune.tracking import schema
from cytotune.tracking.runs import best_configs, read_artifact_texts, runs_frame
from cytotune.tracking.uri import resolve_tracking_uri


def rerun_study(
    best: pd.DataFrame, frame: pd.DataFrame, name: str, tracking_uri: str | None = None
) -> dict[str, Any]:
    """The study (as a YAML mapping) with one method block per chosen cell: the chosen trial's exact
    TrialConfig (searched values fixed, no search, no early stopping) over the seeds that cell ran. The
    chosen trials' config files are read several at once (read_artifact_texts)."""
    chosen = best[best["n_seeds"] > 0]
    if chosen.empty:
        raise CytotuneError(f"study {name}: no cell has a finished trial; expected at least one to rerun")
    searched = list(best.attrs.get("searched", ("lr",)))
    by_cell = dict(tuple(frame.groupby("cell_key", sort=False)))
    cells, picks = [], []
    for _, cell in chosen.iterrows():
        trials = by_cell[cell["cell_key"]]
        picked = trials[trials["status"] == "finished"]
        for field in searched:
            picked = (
                picked[picked[field].isna()] if pd.isna(cell[field]) else picked[picked[field] == cell[field]]
            )
        cells.append((cell["cell_key"], sorted(int(seed) for seed in trials["seed"].unique())))
        picks.append(picked.iloc[0])
    uri = resolve_tracking_uri(tracking_uri)
    texts = read_artifact_texts(uri, [pick["artifact_uri"] for pick in picks], schema.TRIAL_ARTIFACT)
    blocks, weights = [], {}
    for (cell_key, seeds), pick, text in zip(cells, picks, texts, strict=True):
        config = _trial_config(pick["run_id"], text)
        resources = pick.get("resources")
        resources = json.loads(resources) if isinstance(resources, str) else {}
        blocks.append(_block(config, schema.parse_cell_key(cell_key).block, seeds, resources))
        if config.weights is not None:
            weights[config.backbone] = str(config.weights)
    study: dict[str, Any] = {"name": name}
    if weights:
        study["weights"] = weights
    study["methods"] = blocks
    return study


def write_rerun(
    experiment: str,
    path: Path,
    tracking_uri: str | None = None,
    where: str | None = None,
    name: str | None = None,
    frame: pd.DataFrame | None = None,
    best: pd.DataFrame | None = None,
) -> Path:
    """Write the study rerunning an experiment's chosen configurations (named NAME-best by default), chosen
    from `frame` and `best` (its runs_frame and best_configs) when given, else read here."""
    frame = runs_frame(experiment, tracking_uri, where) if frame is None else frame
    best = best_configs(experiment, tracking_uri, where, frame=frame) if best is None else best
    return write_rerun_yaml(rerun_study(best, frame, name or f"{experiment}-best", tracking_uri), path)


def write_rerun_yaml(study: dict[str, Any], path: Path) -> Path:
    """Write a study mapping as YAML, with a comment saying where it came from."""
    path = Path(path)
    header = "# Reruns the validation-selected configuration of each cell (written by `cytotune best`).\n"
    path.write_text(header + yaml.safe_dump(study, sort_keys=False, default_flow_style=None, width=110))
    return path


def _trial_config(run_id: str, text: str | None) -> TrialConfig:
    """The TrialConfig of a run's trial config file (`text`: None when it could not be read)."""
    if text is None:
        raise CytotuneError(
            f"run {run_id}: cannot read {schema.TRIAL_ARTIFACT}; expected a run made by cytotune"
        )
    return TrialConfig.model_validate_json(text)


def _block(config: TrialConfig, label: str, seeds: list[int], resources: dict[str, float]) -> dict[str, Any]:
    data = config.model_dump(mode="json")
    block: dict[str, Any] = {"method": config.method}
    if label != config.method:
        block["name"] = label
    definition = config.backbone_definition
    block["backbones"] = [config.backbone if definition is None else definition.model_dump(exclude_none=True)]
    block["datasets"] = [
        {
            "name": config.dataset,
            "layout": config.dataset_layout,
            "root": data["root"],
            "level": config.level,
            "split": list(config.split),
            "split_seed": config.split_seed,
            **({"prompts": data["prompts"]} if config.prompts is not None else {}),
        }
    ]
    block["seeds"] = seeds
    if config.shots is not None:
        block["shots"] = [config.shots]
    if config.fraction is not None:
        block["fractions"] = [config.fraction]
    for name in ("lr", "k"):
        if getattr(config, name) is not None:
            block[name] = getattr(config, name)
    if config.head_init != "random":
        block["head_init"] = config.head_init
    if config.method == "lora":
        block["lora"] = {key: value for key, value in data["lora"].items() if value is not None}
    block["train"] = data["train"]
    if resources:
        block["resources"] = {"cpus": resources.get("CPU", 1.0), "gpus": resources.get("GPU", 0.0)}
    return block
