"""The Ray Tune function trainable of a study: one trial through `run_trial`, reported to Tune.

Each evaluation becomes `tune.report(metrics)`, with a checkpoint holding the trainer's state when it gives
one (LoRA) and the study's checkpoint clock says so (at most once every `checkpoint_every_s`), so a retried
trial continues from it. The last report carries all final metrics, "done_trial": 1,
val_acc (of the returned model: its best checkpoint, so equal to best_val_acc) and a checkpoint with the
trial's artifacts (trial_manifest.csv, adapter/ for LoRA, result.json).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from cytotune.config import TrialConfig
from cytotune.metric_names import DONE_TRIAL, STEP, VAL_ACC
from cytotune.study.checkpoint_clock import CheckpointClock

STATE_FILE = "state.pt"
RESULT_FILE = "result.json"


def resume_state() -> dict | None:
    """The trainer state of the checkpoint Tune restores this trial from (None: a fresh start)."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        path = Path(folder) / STATE_FILE
        return torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None


def jsonable(value: Any) -> Any:
    """A value with paths as strings and tuples as lists, for JSON."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def trial_config(config: dict[str, Any]) -> TrialConfig:
    """The TrialConfig of a study's Ray config (as planned on the driver: Tune pickles it in its experiment
    state), with this node's cache folder ($CYTOTUNE_CACHE or ~/.cache/cytotune)."""
    return config["trial"].with_local_cache()


def trial_context(cfg: TrialConfig, resumed: bool, started_at: float) -> dict[str, Any]:
    """What every report of a trial carries: its data (see _dataset_fields), start, whether it resumed, the
    resources Ray assigned it and its node."""
    assigned = ray.get_runtime_context().get_assigned_resources()
    return {
        **_dataset_fields(cfg),
        "started_at": started_at,
        "resumed": int(resumed),
        "assigned_cpus": float(assigned.get("CPU", 0.0)),
        "assigned_gpus": float(assigned.get("GPU", 0.0)),
        "gpu_ids": ",".join(str(i) for i in ray.get_gpu_ids()),
        "node_id": ray.get_runtime_context().get_node_id(),
    }


def report_state(metrics: dict, state: dict | None) -> None:
    """tune.report the metrics, with a checkpoint holding `state` (the trainer's, to resume) when given."""
    if state is None:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="cytotune-state-") as folder:
        torch.save(state, Path(folder) / STATE_FILE)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def study_trainable(config: dict[str, Any], checkpoint_every_s: float = 0.0) -> None:
    """Run the trial described by a study's Ray config (see TrialPlan.ray_config) and report it to Tune,
    saving its state at most every `checkpoint_every_s` seconds; a pack's config (study/packs.py) runs as a
    pack."""
    from cytotune.tracking.schema import is_pack_config
    from cytotune.train import run_trial

    if is_pack_config(config):
        from cytotune.study.pack_trainable import pack_trainable

        return pack_trainable(config, checkpoint_every_s)
    started_at = time.time()
    cfg = trial_config(config)
    resume = resume_state()
    timing = trial_context(cfg, resume is not None, started_at)
    clock = CheckpointClock(checkpoint_every_s)

    def report(metrics: dict, state: dict | None) -> None:
        timed = {**metrics, **timing, "elapsed_s": time.time() - started_at}
        report_state(timed, state if state is not None and clock.due() else None)

    with tempfile.TemporaryDirectory(prefix="cytotune-trial-") as folder:
        out = Path(folder)
        result = run_trial(cfg, report=report, resume=resume, out_dir=out)
        write_result(out, result, config["trial_key"])
        final = {
            **result.metrics(),
            VAL_ACC: result.best_val_acc,
            STEP: result.steps,
            DONE_TRIAL: 1,
            **timing,
            "ended_at": time.time(),
            "elapsed_s": time.time() - started_at,
        }
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(folder))


def _dataset_fields(cfg: TrialConfig) -> dict[str, Any]:
    """What the trial's MLflow run records of its data (see tracking.schema.DATASET_FIELDS)."""
    from cytotune.train.trial_data import trial_data

    data = trial_data(cfg)
    return {
        "dataset_name": cfg.dataset,
        "dataset_digest": data.manifest.digest,
        "dataset_root": str(cfg.root),
        "dataset_train": 0 if cfg.method == "zero_shot" else len(data.train),  # zero_shot uses none
        "dataset_val": len(data.val),
        "dataset_test": len(data.test),
    }


def write_result(folder: Path, result: Any, trial_key: str) -> None:
    """The trial's whole result (a TrialResult) and its key as RESULT_FILE in `folder`."""
    full = {**jsonable(dataclasses.asdict(result)), "trial_key": trial_key}
    (folder / RESULT_FILE).write_text(json.dumps(full, indent=1))
