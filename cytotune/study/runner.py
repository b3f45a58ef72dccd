"""Run a study on Ray Tune: check the cluster, prepare shared data once, then one Tuner over every trial."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cytotune.errors import CytotuneError
from cytotune.study.grid import CellPlan, count_trials, expand_cells
from cytotune.study.resources import Fit, fit_cells, local_nodes
from cytotune.study.spec import StudySpec
from cytotune.study.storage import study_storage

OPTUNA_JOURNAL = "optuna.journal"


@dataclass(frozen=True)
class StudyPlan:
    """What a study will run where: its cells, the cluster's nodes and whether the trials fit on them."""

    spec: StudySpec
    cells: list[CellPlan]
    nodes: list[dict[str, float]]
    cluster: str
    fit: Fit

    @property
    def n_trials(self) -> int:
        """Trials of the study."""
        return count_trials(self.cells)


@dataclass(frozen=True)
class TrialOutcome:
    """One trial as Ray Tune left it: keys, status (finished, stopped, failed, unfinished), config,
    searched values and last metrics."""

    trial_key: str
    cell_key: str
    status: str
    trial: dict[str, Any]
    searched: dict[str, Any]
    metrics: dict[str, Any]
    checkpoint: str | None = None


@dataclass(frozen=True)
class StudyOutcome:
    """A launch of a study: where it lives, each trial's outcome, wall time, what was decided, and whether
    it was interrupted before every trial ended (continue it with `resume=True`)."""

    name: str
    path: Path | str  # the experiment's folder, or its URI when the storage is remote
    trials: list[TrialOutcome]
    wall_s: float
    notes: list[str] = field(default_factory=list)
    tracking_uri: str | None = None
    interrupted: bool = False

    def counts(self) -> dict[str, int]:
        """Trials per status."""
        out = {"finished": 0, "stopped": 0, "failed": 0, "unfinished": 0}
        for trial in self.trials:
            out[trial.status] = out.get(trial.status, 0) + 1
        return out

    def frame(self) -> pd.DataFrame:
        """One row per trial: keys, status, the flattened trial config, searched values and final metrics."""
        rows = []
        for t in self.trials:
            row = {"trial_key": t.trial_key, "cell_key": t.cell_key, "status": t.status}
            for name, value in t.trial.items():
                if isinstance(value, dict):
                    row.update({f"{name}.{k}": v for k, v in value.items()})
                else:
                    row[name] = value
            row.update({k: v for k, v in t.metrics.items() if isinstance(v, (int, float, str))})
            rows.append(row)
        return pd.DataFrame(rows)

    def best_per_cell(self) -> pd.DataFrame:
        """Per cell, the searched values with the best mean validation accuracy and their test accuracy."""
        from cytotune.tracking.selection import select_best

        searched = sorted({name for t in self.trials for name in t.searched})
        frame = self.frame()
        for name in searched:
            if name not in frame.columns:
                frame[name] = None
        if "test_acc" not in frame.columns:
            frame["test_acc"] = float("nan")
        return select_best(frame, searched=searched or ("lr",))


def _machine() -> tuple[int, int]:
    import torch

    return os.cpu_count() or 1, torch.cuda.device_count()


@contextmanager
def ray_session(address: str | None) -> Iterator[str]:
    """Use the connected Ray, connect to `address`, or start a local Ray sized to this machine."""
    import ray

    if ray.is_initialized():
        yield "the connected Ray cluster"
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        ray.init(address=address, log_to_driver=False)
        where = f"Ray cluster at {address}"
    else:
        cpus, gpus = _machine()
        ray.init(
            address="local",
            num_cpus=cpus,
            num_gpus=gpus,
            include_dashboard=False,
            object_store_memory=100 * 1024**2,
            log_to_driver=False,
        )
        where = f"local Ray ({cpus} CPU, {gpus} GPU)"
    try:
        yield where
    finally:
        ray.shutdown()


def _live_nodes() -> list[dict[str, float]]:
    import ray

    return [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]


def plan_study(spec: StudySpec, nodes: list[dict[str, float]], cluster: str) -> StudyPlan:
    """The study's cells checked against the nodes' resources (nothing runs)."""
    cells = expand_cells(spec)
    return StudyPlan(spec, cells, nodes, cluster, fit_cells(cells, nodes, spec.where()))


def dry_run(spec: StudySpec, *, address: str | None = None) -> StudyPlan:
    """Plan the study against the cluster at `address` (or this machine) without running anything."""
    from cytotune.study.prepare import check_registries

    check_registries(spec)
    if address is None:
        cpus, gpus = _machine()
        return plan_study(spec, local_nodes(cpus, gpus), f"this machine ({cpus} CPU, {gpus} GPU)")
    with ray_session(address) as where:
        return plan_study(spec, _live_nodes(), where)


def describe_plan(plan: StudyPlan) -> str:
    """The dry-run text: cells, trials per cell, resources per trial, and whether the cluster can run them."""
    spec = plan.spec
    lines = [f"study {spec.name} ({spec.where()}): {len(plan.cells)} cells, {plan.n_trials} trials"]
    width = max((len(c.cell_key) for c in plan.cells), default=4)
    lines.append(f"{'cell':<{width}}  trials  searched                  per trial")
    for cell in plan.cells:
        if cell.uses_optuna:
            searched = f"optuna {cell.n_suggestions} x {', '.join(sorted(cell.optuna))}"
        else:
            searched = " x ".join(f"{name} {len(v)}" for name, v in sorted(cell.grid.items())) or "-"
        searched += f" x {len(cell.seeds)} seeds"
        ask = f"{cell.resources['CPU']:g} CPU, {cell.resources['GPU']:g} GPU"
        lines.append(f"{cell.cell_key:<{width}}  {cell.n_trials:>6}  {searched:<24}  {ask}")
    gpus = sum(n.get("GPU", 0.0) for n in plan.nodes)
    cpus = sum(n.get("CPU", 0.0) for n in plan.nodes)
    lines.append(f"cluster: {plan.cluster}: {len(plan.nodes)} node(s), {cpus:g} CPU, {gpus:g} GPU")
    lines.extend(plan.fit.notes)
    lines.append("can run: yes" if plan.fit.ok else "can run: no")
    lines.extend(plan.fit.problems)
    return "\n".join(lines)


def experiment_path(spec: StudySpec, storage: str | Path | None) -> Path:
    """The study's folder on this machine: Ray's STORAGE/NAME when the storage is local (storage: argument,
    YAML, else ./ray_results), the driver's own folder when it is a remote URI (see StudyStorage)."""
    return study_storage(spec.name, storage, spec.storage).driver_dir


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def _outcomes(path: str) -> list[TrialOutcome]:
    """Each trial of the experiment at `path` as Ray Tune saved it (status, config, last result)."""
    from ray.tune import ExperimentAnalysis

    from cytotune.study.progress import trial_status

    out = []
    for trial in ExperimentAnalysis(path).trials:
        config = trial.config or {}
        checkpoint = trial.checkpoint
        out.append(
            TrialOutcome(
                trial_key=config.get("trial_key", ""),
                cell_key=config.get("cell_key", ""),
                status=trial_status(trial.status, trial.last_result),
                trial=config.get("trial", {}),
                searched=config.get("searched", {}),
                metrics=dict(trial.last_result or {}),
                checkpoint=checkpoint.path if checkpoint is not None else None,
            )
        )
    return out


def _require_fit(plan: StudyPlan) -> StudyPlan:
    if not plan.fit.ok:
        raise CytotuneError(plan.fit.problems[0])
    return plan


def run_study(
    spec: StudySpec,
    *,
    address: str | None = None,
    tracking_uri: str | None = None,
    storage: str | Path | None = None,
    resume: bool = False,
    max_concurrent: int | None = None,
    callbacks: Sequence[Any] = (),
    reuse_actors: bool = True,
    say: Callable[[str], None] = print,
) -> StudyOutcome:
    """Run (or with `resume`, continue) a study on Ray Tune and return each trial's outcome.

    Checks the backbones, datasets and the cluster's resources first; prepares manifests, image caches and
    (on a local Ray) probe features once; then runs one Tuner with per-cell ASHA, the per-cell searcher,
    per-method resources and FailureConfig(max_failures). `callbacks` are Ray Tune callbacks (e.g. MLflow).
    `tracking_uri` (else the YAML's) is checked to be usable before anything starts.
    """
    from ray import tune

    from cytotune.study.prepare import check_registries, prepare_data
    from cytotune.study.progress import ProgressLine
    from cytotune.study.scheduler import PerCellASHA
    from cytotune.study.search import CellSearcher
    from cytotune.study.trainable import study_trainable_with_resources

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's own tables off: ProgressLine reports
    import ray

    if address is None and not ray.is_initialized():
        cpus, gpus = _machine()
        _require_fit(plan_study(spec, local_nodes(cpus, gpus), "this machine"))
    check_registries(spec)
    tracking_uri = tracking_uri or spec.tracking_uri
    if tracking_uri:
        from cytotune.tracking.uri import check_tracking

        check_tracking(tracking_uri)
    store = study_storage(spec.name, storage, spec.storage)
    path = store.driver_dir
    if resume and not tune.Tuner.can_restore(store.experiment):
        raise CytotuneError(f"{store}: no study to resume there; expected the storage of an earlier run")
    if not resume and store.exists("tuner.pkl"):
        raise CytotuneError(
            f"{store}: a study of this name is already there; expected --resume or another --storage"
        )
    start = time.perf_counter()
    with ray_session(address) as where:
        plan = _require_fit(plan_study(spec, _live_nodes(), where))
        for note in plan.fit.notes:
            say(note)
        cells = plan.fit.cells
        prepare_data(spec, cells, features=address is None, say=say)
        progress = ProgressLine(plan.n_trials)
        trainable = study_trainable_with_resources()
        if resume:
            tuner = tune.Tuner.restore(store.experiment, trainable, resume_errored=True)
            tuner._local_tuner._run_config.callbacks = [*callbacks, progress]
        else:
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=CellSearcher(cells, path / OPTUNA_JOURNAL),
                    scheduler=PerCellASHA({cell.cell_key: cell.block.asha for cell in cells}),
                    num_samples=plan.n_trials,
                    max_concurrent_trials=max_concurrent,
                    reuse_actors=reuse_actors,
                    trial_dirname_creator=_trial_dirname,
                ),
                run_config=tune.RunConfig(
                    name=spec.name,
                    storage_path=store.root,
                    failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                    callbacks=[*callbacks, progress],
                    verbose=0,
                ),
            )
        tuner.fit()
    trials = _outcomes(store.experiment)
    return StudyOutcome(
        name=spec.name,
        path=store.local or store.experiment,
        trials=trials,
        wall_s=time.perf_counter() - start,
        notes=list(plan.fit.notes),
        tracking_uri=tracking_uri,
        interrupted=len(trials) < plan.n_trials or any(t.status == "unfinished" for t in trials),
    )
