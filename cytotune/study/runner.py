"""Run a study on Ray Tune: check the cluster, prepare shared data once, then one Tuner over every trial."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pandas as pd

from cytotune.config import TrialConfig
from cytotune.errors import CytotuneError
from cytotune.metric_names import TEST_ACC
from cytotune.study.checkpoint_clock import KEEP_CHECKPOINTS
from cytotune.study.grid import CellPlan, count_trials, expand_cells
from cytotune.study.launch import (
    OWN_FILES,
    LaunchRecord,
    check_resumable,
    launch_lock,
    read_record,
    resume_tracking_uri,
    study_fields,
    write_record,
)
from cytotune.study.packs import (
    pack_checks,
    pack_members,
    pack_note,
    pack_summary,
    ray_trial_count,
    with_pack_checks,
)
from cytotune.study.resources import Fit, fit_cells, local_nodes, pending_trials_limit
from cytotune.study.signals import StopSignals, StudyInterrupted
from cytotune.study.spec import StudySpec
from cytotune.study.storage import StudyStorage, study_storage
from cytotune.tracking.schema import is_pack_config

OPTUNA_JOURNAL = "optuna.journal"
END_JOURNAL = "trial_ends.jsonl"  # trial ends not yet written to MLflow (tracking/end_journal.py)
CONNECT_TIMEOUT_S = 30.0


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
    stop_signal: int | None = None

    def counts(self) -> dict[str, int]:
        """Trials per status."""
        out = {"finished": 0, "stopped": 0, "failed": 0, "unfinished": 0}
        for trial in self.trials:
            out[trial.status] = out.get(trial.status, 0) + 1
        return out

    def failed(self) -> list[str]:
        """Keys of the trials that failed after their retries."""
        return [t.trial_key for t in self.trials if t.status == "failed"]

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
        if TEST_ACC not in frame.columns:
            frame[TEST_ACC] = float("nan")
        return select_best(frame, searched=searched or ("lr",))


def _machine() -> tuple[int, int]:
    import torch

    return os.cpu_count() or 1, torch.cuda.device_count()


def wait_for_cluster(address: str, timeout_s: float) -> None:
    """Wait up to `timeout_s` for something to listen at the Ray address HOST:PORT (ray://HOST:PORT too);
    else one line. 'auto' and 'local' are left to Ray."""
    target = address.removeprefix("ray://")
    if address in ("auto", "local") or ":" not in target:
        return
    host, _, port = target.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host, int(port)), timeout=max(0.1, min(left, 2.0))):
                return
        except ValueError as err:
            raise CytotuneError(f"--address {address}: expected HOST:PORT or auto") from err
        except OSError as err:
            if left <= 0:
                raise CytotuneError(
                    f"--address {address}: no Ray cluster answered within {timeout_s:g} s ({err}); expected "
                    "a running cluster at that address (or a longer --connect-timeout)"
                ) from None
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


@contextmanager
def ray_session(
    address: str | None,
    *,
    signals: StopSignals | None = None,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    say: Callable[[str], None] = lambda _: None,
) -> Iterator[str]:
    """Use the connected Ray, connect to `address` (waiting at most `connect_timeout_s` for it to answer),
    or start a local Ray sized to this machine; shut down what was started, whatever happens."""
    import ray

    if ray.is_initialized():
        yield "the connected Ray cluster"
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        if address:
            wait_for_cluster(address, connect_timeout_s)
            ray.init(address=address, log_to_driver=False)
            where = f"Ray cluster at {address}"
            say(f"connected to the {where}")  # after: an address that does not answer stays one line
        else:
            cpus, gpus = _machine()
            say(f"starting a local Ray ({cpus} CPU, {gpus} GPU)")
            try:
                ray.init(
                    address="local",
                    num_cpus=cpus,
                    num_gpus=gpus,
                    include_dashboard=False,
                    object_store_memory=100 * 1024**2,
                    log_to_driver=False,
                )
            except SystemExit as err:
                # Ray's own SIGTERM handler, in place while it starts, stopped its processes and exits
                if signals is None or not signals.active:
                    raise
                signals.received = signals.received or signal.SIGTERM
                raise StudyInterrupted(signals.received) from err
            where = f"local Ray ({cpus} CPU, {gpus} GPU)"
        if signals is not None:
            signals.install()
            signals.raise_if_received()
        yield where
    finally:
        if signals is not None:
            signals.install()
        ray.shutdown()


def _live_nodes() -> list[dict[str, float]]:
    import ray

    return [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]


def plan_study(
    spec: StudySpec, cells: list[CellPlan], nodes: list[dict[str, float]], cluster: str
) -> StudyPlan:
    """The study's cells checked against the nodes' resources and packs against their GPU (nothing runs)."""
    fit = with_pack_checks(fit_cells(cells, nodes, spec.where()), spec.where())
    return StudyPlan(spec, cells, nodes, cluster, fit)


def dry_run(
    spec: StudySpec,
    cells: list[CellPlan] | None = None,
    *,
    address: str | None = None,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
) -> StudyPlan:
    """Plan the study's cells (expanded here when not given) against the cluster at `address` (or this
    machine) without running anything."""
    from cytotune.study.prepare import check_registries

    check_registries(spec)
    cells = expand_cells(spec) if cells is None else cells
    if address is None:
        cpus, gpus = _machine()
        return plan_study(spec, cells, local_nodes(cpus, gpus), f"this machine ({cpus} CPU, {gpus} GPU)")
    with ray_session(address, connect_timeout_s=connect_timeout_s) as where:
        return plan_study(spec, cells, _live_nodes(), where)


def describe_plan(plan: StudyPlan) -> str:
    """The dry-run text: cells, trials per cell, resources per trial (per pack for a packed cell, with its
    memory estimate), and whether the cluster can run them."""
    spec = plan.spec
    lines = [f"study {spec.name} ({spec.where()}): {len(plan.cells)} cells, {plan.n_trials} trials"]
    width = max((len(c.cell_key) for c in plan.cells), default=4)
    packs = {check.cell.cell_key: check for check in pack_checks(plan.fit.cells)}
    lines.append(f"{'cell':<{width}}  trials  searched                  per trial")
    for cell in plan.cells:
        if cell.uses_optuna:
            searched = f"optuna {cell.n_suggestions} x {', '.join(sorted(cell.optuna))}"
        else:
            searched = " x ".join(f"{name} {len(v)}" for name, v in sorted(cell.grid.items())) or "-"
        searched += f" x {len(cell.seeds)} seeds"
        ask = f"{cell.resources['CPU']:g} CPU, {cell.resources['GPU']:g} GPU"
        row = f"{cell.cell_key:<{width}}  {cell.n_trials:>6}  {searched:<24}  {ask}"
        lines.append(row + pack_note(packs.get(cell.cell_key)))
    gpus = sum(n.get("GPU", 0.0) for n in plan.nodes)
    cpus = sum(n.get("CPU", 0.0) for n in plan.nodes)
    lines.extend(pack_summary(list(packs.values()), plan.fit.cells))
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


@contextmanager
def without_result_files_warning() -> Iterator[None]:
    """Silence ExperimentAnalysis's warning that a trial has no result files for the block: Tune's per-trial
    result files are off (MLflow holds every result), and Tune reads them back at the end of `fit`."""
    quiet = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        yield
    finally:
        quiet.setLevel(level)


def saved_trials(path: str) -> list[Any]:
    """The trials of the experiment at `path` as Ray Tune last saved them."""
    from ray.tune import ExperimentAnalysis

    with without_result_files_warning():
        return ExperimentAnalysis(path).trials


def _outcomes(path: str) -> list[TrialOutcome]:
    """Each trial of the experiment at `path` as Ray Tune saved it (status, config, last result)."""
    from cytotune.study.progress_line import trial_status

    out = []
    for trial in saved_trials(path):
        config = trial.config or {}
        checkpoint = trial.checkpoint
        if is_pack_config(config):
            status = trial_status(trial.status, trial.last_result)
            where = checkpoint.path if checkpoint is not None else None
            for member in pack_members(config, status, trial.last_result, where):
                out.append(TrialOutcome(**{**member, "trial": _settings(member["trial"])}))
            continue
        out.append(
            TrialOutcome(
                trial_key=config.get("trial_key", ""),
                cell_key=config.get("cell_key", ""),
                status=trial_status(trial.status, trial.last_result),
                trial=_settings(config.get("trial")),
                searched=config.get("searched", {}),
                metrics=dict(trial.last_result or {}),
                checkpoint=checkpoint.path if checkpoint is not None else None,
            )
        )
    return out


def _settings(trial: TrialConfig | None) -> dict[str, Any]:
    """A trial's settings as JSON values for the outcome table (without cache_dir: each node has its own)."""
    return {} if trial is None else trial.model_dump(mode="json", exclude={"cache_dir"})


def _require_fit(plan: StudyPlan) -> StudyPlan:
    if not plan.fit.ok:
        raise CytotuneError(plan.fit.problems[0])
    return plan


def _restorable(store: StudyStorage) -> bool:
    """Whether Ray Tune saved the experiment with at least one trial (a launch stopped before its first trial
    leaves a Tuner that cannot be restored). Remote storage: whether Ray can restore it at all."""
    from ray import tune

    if not tune.Tuner.can_restore(store.experiment):
        return False
    if store.local is None:
        return True
    states = sorted(store.local.glob("experiment_state-*.json"))
    try:
        return bool(states) and bool(json.loads(states[-1].read_text()).get("trial_data"))
    except (OSError, ValueError):
        return False


def _clear_ray_state(path: Path) -> None:
    """Remove what Ray Tune left at `path`, keeping the launch's own files (lock, holder, record)."""
    for entry in path.iterdir():
        if entry.name in OWN_FILES:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _new_folders(path: Path) -> Path | None:
    """The outermost folder of `path` that does not exist yet (removed again if the launch is refused)."""
    top = None
    for folder in (path, *path.parents):
        if folder.exists():
            return top
        top = folder
    return top


def _launch_checks(spec: StudySpec, store: StudyStorage, resume: bool) -> bool:
    """Check a launch against the study's storage; return whether Ray's saved experiment is restored."""
    path = store.driver_dir
    record = read_record(path)
    if not resume:
        if record is not None or store.exists("tuner.pkl"):
            raise CytotuneError(
                f"{path}: study {spec.name} was launched there before; expected --resume to continue it, "
                "or another --storage or study name"
            )
        return False
    if record is None and not store.exists("tuner.pkl"):
        raise CytotuneError(f"{path}: no study to resume there; expected the storage of an earlier run")
    if record is not None:
        check_resumable(spec, record, path)
    return _restorable(store)


def run_study(
    spec: StudySpec,
    cells: list[CellPlan] | None = None,
    *,
    address: str | None = None,
    tracking_uri: str | None = None,
    storage: str | Path | None = None,
    resume: bool = False,
    max_concurrent: int | None = None,
    callbacks: Sequence[Any] = (),
    reuse_actors: bool = True,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    signals: StopSignals | None = None,
    say: Callable[[str], None] = print,
    trainable: Any | None = None,
) -> StudyOutcome:
    """Run (or with `resume`, continue) a study on Ray Tune and return each trial's outcome. `cells`: the
    study's plan (expand_cells), made by the caller once for the launch and its MLflow callback; expanded
    here when not given.

    Checks the backbones, datasets and the cluster's resources first; takes the study's launch lock (one
    launch at a time) and records the launch (study, tracking URI, storage) in its storage folder; prepares
    manifests, image caches and (on a local Ray) probe features once; then runs one Tuner with per-cell ASHA,
    the per-cell searcher, per-method resources and FailureConfig(max_failures). `callbacks` are Ray Tune
    callbacks (e.g. MLflow). `tracking_uri` (else the YAML's) is checked to be usable before anything starts.
    A resume is refused when the study changed since its launch, and starts the study afresh when its launch
    was stopped before Tune saved a trial. SIGINT and SIGTERM stop the study cleanly at any moment: the
    outcome says which signal came (`stop_signal`) and that the study was interrupted. `signals`: handlers
    the caller installed already (else run_study installs its own for the call). `trainable`: a function of
    a trial's Ray config run instead of the study's trainable, e.g. a benchmark's simulated one; the data is
    then not prepared. On resume, trials that Tune starts again although their MLflow run ended (after Tune's
    last snapshot) report that end instead of training again (tracking/replay.py).
    """
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's own tables off: ProgressLine reports
    # Tune's CSV, JSON and TensorBoard files per trial off: MLflow holds every result, and those loggers cost
    # the driver ~8 ms a result (an fsync each) at cluster scale (cytotune bench scale).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    import ray

    from cytotune.study.prepare import check_registries, prepare_data
    from cytotune.tracking.uri import check_tracking

    cells = expand_cells(spec) if cells is None else cells
    if address is None and not ray.is_initialized():
        cpus, gpus = _machine()
        _require_fit(plan_study(spec, cells, local_nodes(cpus, gpus), "this machine"))
    check_registries(spec)
    store = study_storage(spec.name, storage, spec.storage)
    path = store.driver_dir
    record = read_record(path) if resume else None
    if record is not None:
        check_resumable(spec, record, path)
        tracking_uri = resume_tracking_uri(spec, path, tracking_uri)
    tracking_uri = tracking_uri or spec.tracking_uri
    if tracking_uri:
        check_tracking(tracking_uri)
    n_trials = count_trials(cells)
    start = time.perf_counter()
    new_folder = _new_folders(path)
    plan = None
    owned = signals is None
    signals = signals or StopSignals()
    with signals if owned else nullcontext(signals):
        try:
            with launch_lock(path, spec.name):
                restore = _launch_checks(spec, store, resume)
                if resume and not restore:
                    _clear_ray_state(path)
                _journal_ends(path, callbacks)
                record = LaunchRecord(
                    study=study_fields(spec),
                    tracking_uri=tracking_uri,
                    storage=store.root,
                    source=str(spec.source) if spec.source else None,
                )
                write_record(path, record)
                with ray_session(
                    address, signals=signals, connect_timeout_s=connect_timeout_s, say=say
                ) as where:
                    plan = _require_fit(plan_study(spec, cells, _live_nodes(), where))
                    for note in plan.fit.notes:
                        say(note)
                    if trainable is None:
                        prepare_data(spec, plan.fit.cells, features=address is None, say=say)
                    replays = _replays(store, plan.fit.cells, callbacks, say) if restore else {}
                    tuner = _tuner(
                        spec,
                        plan,
                        store,
                        restore,
                        max_concurrent,
                        callbacks,
                        reuse_actors,
                        trainable,
                        replays,
                    )
                    say(f"running {plan.n_trials} trials on Ray Tune" + (" (resumed)" if resume else ""))
                    with (
                        signals.tune_phase(),
                        pending_trials_limit(plan.fit.cells, plan.nodes),
                        without_result_files_warning(),
                    ):
                        tuner.fit()
        except CytotuneError:
            if new_folder is not None and not (path / "tuner.pkl").exists():
                shutil.rmtree(new_folder, ignore_errors=True)  # a refused launch leaves nothing behind
            raise
        except StudyInterrupted:
            pass
    trials = _outcomes(store.experiment) if _restorable(store) else []
    return StudyOutcome(
        name=spec.name,
        path=store.local or store.experiment,
        trials=trials,
        wall_s=time.perf_counter() - start,
        notes=list(plan.fit.notes) if plan is not None else [],
        tracking_uri=tracking_uri,
        interrupted=len(trials) < n_trials or any(t.status == "unfinished" for t in trials),
        stop_signal=signals.received,
    )


def _replays(
    store: StudyStorage, cells: list[CellPlan], callbacks: Sequence[Any], say: Callable[[str], None]
) -> dict[str, dict]:
    """What the trials Tune may start again report instead of training, where their MLflow run (read by the
    launch's MlflowCallback) ended after Tune's last snapshot; none without an MlflowCallback. Tune starts
    again the trials its snapshot holds as not ended, and its searcher suggests again, with the same keys,
    those it suggested after the snapshot: every trial the snapshot does not hold as ended."""
    from ray.tune.experiment import Trial

    from cytotune.study.packs import pack_configs

    tracking = _tracking(callbacks)
    if tracking is None:
        return {}
    recovered = tracking.recover_ends()
    if recovered:
        say(f"{recovered} trial ends the stopped driver had not written to MLflow: written from its journal")
    saved = saved_trials(store.experiment)
    ended = {(t.config or {}).get("trial_key") for t in saved if t.status == Trial.TERMINATED}
    replays = tracking.replays(pack_configs(cells), exclude=ended)
    if replays:
        say(
            f"{len(replays)} trials ended after Ray Tune's last snapshot: they report their recorded end "
            "instead of training again"
        )
    return replays


def _tracking(callbacks: Sequence[Any]) -> Any | None:
    """The launch's MlflowCallback among its callbacks (None without one)."""
    from cytotune.tracking.callback import MlflowCallback

    return next((c for c in callbacks if isinstance(c, MlflowCallback)), None)


def _journal_ends(driver_dir: Path, callbacks: Sequence[Any]) -> None:
    """Give the launch's MlflowCallback the study's end journal (a killed driver's unwritten trial ends)."""
    from cytotune.tracking.end_journal import EndJournal

    tracking = _tracking(callbacks)
    if tracking is not None:
        tracking.end_journal = EndJournal(driver_dir / END_JOURNAL)


def restored_callbacks(tuner: Any, callbacks: list) -> None:
    """Give a restored Tuner this launch's callbacks. Tuner.restore takes none (they are not saved with the
    experiment), so this sets them on its run config: with `restored_scheduler`, the private Ray API the
    study uses, kept here and checked by tests/test_study_ray_private.py, so a Ray release that moves it
    fails loudly."""
    config = getattr(getattr(tuner, "_local_tuner", None), "_run_config", None)
    if config is None or not hasattr(config, "callbacks"):
        _moved("_run_config.callbacks", "its MLflow callback", "restored_callbacks")
    config.callbacks = callbacks


def restored_scheduler(tuner: Any) -> Any:
    """The scheduler a restored Tuner unpickled from its experiment (the one its trials will report to), so
    that the rungs of Tune's last snapshot can be handed to it (scheduler.RungsKeeper)."""
    config = getattr(getattr(tuner, "_local_tuner", None), "_tune_config", None)
    if config is None or not hasattr(config, "scheduler"):
        _moved("_tune_config.scheduler", "its early-stopping rungs", "restored_scheduler")
    return config.scheduler


def _moved(attribute: str, what: str, function: str) -> NoReturn:
    import ray

    raise RuntimeError(
        f"Ray {ray.__version__}: Tuner._local_tuner.{attribute} is gone; resume cannot pass {what} (see "
        f"cytotune.study.runner.{function})"
    )


def _tuner(
    spec: StudySpec,
    plan: StudyPlan,
    store: StudyStorage,
    restore: bool,
    max_concurrent: int | None,
    callbacks: Sequence[Any],
    reuse_actors: bool,
    train: Callable[[dict[str, Any]], None] | None = None,
    replays: dict[str, dict[str, Any]] | None = None,
):
    """The study's Tuner: restored from its storage, or new over every trial of the plan. `train`: the
    trial function (else the study's trainable); `replays`: what trials Tune starts again report instead."""
    from ray import tune

    from cytotune.study.progress_line import ProgressLine
    from cytotune.study.scheduler import RungsKeeper, SeedGroupedASHA
    from cytotune.study.search import CellSearcher
    from cytotune.study.trainable import study_trainable
    from cytotune.study.tune_trainable import tune_trainable

    cells = plan.fit.cells
    progress = ProgressLine(ray_trial_count(cells))
    train = train or tune.with_parameters(study_trainable, checkpoint_every_s=spec.checkpoint_every_s)
    trainable = tune_trainable(train, replays or {})
    if restore:
        with without_result_files_warning():  # Tuner.restore reads the saved trials' results back
            tuner = tune.Tuner.restore(store.experiment, trainable, resume_errored=True)
        # the keeper first: Tune hands each callback back its saved state by position
        restored_callbacks(tuner, [RungsKeeper(restored_scheduler(tuner)), *callbacks, progress])
        return tuner
    scheduler = SeedGroupedASHA.for_cells(cells)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=CellSearcher(cells, store.driver_dir / OPTUNA_JOURNAL),
            scheduler=scheduler,
            num_samples=ray_trial_count(cells),
            max_concurrent_trials=max_concurrent,
            reuse_actors=reuse_actors,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=spec.name,
            storage_path=store.root,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
            callbacks=[RungsKeeper(scheduler), *callbacks, progress],
            verbose=0,
        ),
    )
