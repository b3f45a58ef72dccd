"""A study's plan and a launch's outcome as plain JSON-able dicts (what `run --json` prints)."""

from __future__ import annotations

import math
from typing import Any

from cytotune.study.packs import PackCheck, pack_checks, ray_trial_count
from cytotune.study.runner import StudyOutcome, StudyPlan
from cytotune.train.result import SCALAR_FIELDS


def plan_dict(plan: StudyPlan) -> dict[str, Any]:
    """The dry run: the study, each cell (trials, searched fields, seeds, resources per trial, its pack or
    null), the Ray trials, the cluster and whether it can run the study, with the notes and problems of that
    check."""
    spec = plan.spec
    packs = {check.cell.cell_key: check for check in pack_checks(plan.fit.cells)}
    cells = [
        {
            "cell_key": cell.cell_key,
            "method": cell.block.method,
            "backbone": cell.template.backbone,
            "dataset": cell.template.dataset,
            "trials": cell.n_trials,
            "search": "optuna" if cell.uses_optuna else "grid",
            "searched": sorted(cell.optuna or cell.grid),
            "suggestions": cell.n_suggestions,
            "seeds": list(cell.seeds),
            "resources": dict(cell.resources),
            "pack": _pack(packs.get(cell.cell_key)),
        }
        for cell in plan.cells
    ]
    return {
        "study": spec.name,
        "source": str(spec.source) if spec.source is not None else None,
        "cells": cells,
        "n_cells": len(plan.cells),
        "n_trials": plan.n_trials,
        "n_ray_trials": ray_trial_count(plan.fit.cells),
        "cluster": {
            "where": plan.cluster,
            "nodes": len(plan.nodes),
            "cpus": sum(n.get("CPU", 0.0) for n in plan.nodes),
            "gpus": sum(n.get("GPU", 0.0) for n in plan.nodes),
        },
        "can_run": plan.fit.ok,
        "notes": list(plan.fit.notes),
        "problems": list(plan.fit.problems),
    }


def _pack(check: PackCheck | None) -> dict[str, Any] | None:
    """A packed cell's pack: its trials, memory estimate and the GPU memory it was checked against (GiB)."""
    if check is None:
        return None
    return {
        "trials": check.configurations,
        "memory_gib": check.estimate_gb,
        "gpu_memory_gib": check.memory_gb,
        "gpu_memory_from": check.source,
        "fits": check.fits,
    }


def outcome_dict(outcome: StudyOutcome, tracking_uri: str) -> dict[str, Any]:
    """The end of a launch: trials per status, wall time, where Ray and MLflow keep it, and each trial's
    keys, status, searched values and final metrics (null where it has none)."""
    trials = [
        {
            "trial_key": trial.trial_key,
            "cell_key": trial.cell_key,
            "status": trial.status,
            "searched": trial.searched,
            **{name: _number(trial.metrics.get(name)) for name in SCALAR_FIELDS},
        }
        for trial in outcome.trials
    ]
    return {
        "study": outcome.name,
        "trials": len(outcome.trials),
        "counts": outcome.counts(),
        "wall_s": outcome.wall_s,
        "interrupted": outcome.interrupted,
        "storage": str(outcome.path),
        "mlflow": {"experiment": outcome.name, "tracking_uri": tracking_uri},
        "notes": list(outcome.notes),
        "results": trials,
    }


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if isinstance(value, float) and not math.isfinite(value) else value
