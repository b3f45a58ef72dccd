"""`cytotune bench scale`: the real study runner at cluster scale over a simulated trainable.

A shipped study YAML is planned with the real grid expansion and run by `run_study` (seed-grouped ASHA, the
cell searcher, the MLflow callback, Ray Tune) on a local Ray node declaring many GPUs, each trial asking one
GPU and a hundredth of a CPU; only the trainable is simulated (`simulated.py`: synthetic learning curves,
sleeps so a whole trial lasts about `seconds`). The driver runs in a child process of its own (so its CPU
time, peak memory and MLflow calls are its own, and it can be killed); it logs to a real `mlflow server` on
PostgreSQL. Afterwards the runs are counted from MLflow against the plan and Ray Tune's own result records
(runs per trial, duplicates, trials without a run, metric steps Tune received that MLflow lacks), and
`cytotune best` and `cytotune report` are timed over every run. Faults: `driver-kill` (SIGKILL the driver's
session a third of the way in, then resume: the first launch's own figures are lost with it),
`mlflow-restart` (stop the tracking server a third of the way in, start it again on the same store 5 s
later), `node-loss` (a head and two GPU worker nodes; one worker node removed a third of the way in: its
trials are retried from their checkpoints, `max_failures` of the YAML).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cytotune.errors import CytotuneError

FAULTS = ("none", "driver-kill", "mlflow-restart", "node-loss")
TRIAL_CPUS = 0.01
DRIVER_OUT = "driver.out"  # the driver's stdout (its figures, as the last JSON line)
AXES = ("backbones", "datasets", "lora.rank", "shots")  # trimmed from the end, in this order, for --trials


@dataclass
class DriverFigures:
    """What one launch of the driver measured of itself."""

    trials: int = 0
    wall_s: float = 0.0
    driver_cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    mlflow_calls: int = 0
    mlflow_s: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False


@dataclass
class ScaleFigures:
    """One study's figures: planned trials, slots, the driver's launches summed, counts read back from
    MLflow and the events log, and the query commands' times."""

    study: str
    trials: int
    slots: int
    seconds: float
    fault: str
    launches: int
    driver: DriverFigures
    runs: int = 0
    duplicates: int = 0
    trials_without_run: int = 0
    metric_steps: int = 0
    lost_steps: int = 0
    restarted_trials: int = 0
    ended_rerun: int = 0
    recorded_ended: int = 0
    journaled_ended: int = 0
    recorded_rerun: int = 0
    simulated_s: float = 0.0
    best_s: float = 0.0
    report_s: float = 0.0
    load: str = ""

    @property
    def ideal_s(self) -> float:
        """Total simulated trial time over the slots."""
        return self.simulated_s / self.slots

    def row(self) -> dict[str, Any]:
        """The figures as one flat mapping (the table's column, the JSON's object)."""
        d = self.driver
        per = max(self.trials, 1)
        return {
            "study": self.study,
            "trials": self.trials,
            "slots": self.slots,
            "fault": self.fault,
            "launches": self.launches,
            "finished / stopped / failed": "{finished} / {stopped} / {failed}".format(
                **{"finished": 0, "stopped": 0, "failed": 0, **d.counts}
            ),
            "driver CPU s per trial": d.driver_cpu_s / per,
            "wall s": d.wall_s,
            "ideal s": self.ideal_s,
            "wall / ideal": d.wall_s / self.ideal_s if self.ideal_s else float("nan"),
            "wall overhead s per trial": (d.wall_s - self.ideal_s) / per,
            "MLflow calls per trial": d.mlflow_calls / per,
            "MLflow s per trial": d.mlflow_s / per,
            "driver peak MB": d.peak_rss_mb,
            "runs": self.runs,
            "duplicate runs": self.duplicates,
            "trials without run": self.trials_without_run,
            "metric steps (Tune)": self.metric_steps,
            "metric steps lost": self.lost_steps,
            "trials restarted": self.restarted_trials,
            "ended trials re-run": self.ended_rerun,
            "ended in MLflow at the kill": self.recorded_ended,
            "... or only in the end journal": self.journaled_ended,
            "... of them re-run": self.recorded_rerun,
            "best s": self.best_s,
            "report s": self.report_s,
            "load (1/5/15 min)": self.load,
        }


# --- the bench study ---------------------------------------------------------------------------------


def _count(path: Path) -> tuple[int, Any]:
    from cytotune.study.grid import count_trials, expand_cells
    from cytotune.study.spec import load_study

    spec = load_study(path)
    return count_trials(expand_cells(spec)), spec


def _axis(raw: dict[str, Any], axis: str) -> list | None:
    block = raw["methods"][0]
    if axis == "lora.rank":
        rank = block.get("lora", {}).get("rank")
        return rank if isinstance(rank, list) else None
    holder = block if axis in block else raw
    value = holder.get(axis)
    return value if isinstance(value, list) else None


def bench_yaml(
    space: Path, work: Path, trials: int | None = None, checkpoint_every_s: float | None = None
) -> Path:
    """The bench's copy of a study YAML in `work`: named scale_NAME, storage and data under `work`, no
    tracking URI, each trial asking 1 GPU and a hundredth of a CPU (so two real cores drive many slots);
    with `trials`, axes trimmed from their end (backbones, datasets, ranks, shots) to at most that many;
    with `checkpoint_every_s`, that checkpoint period instead of the YAML's."""
    try:
        raw = yaml.safe_load(space.read_text())
    except OSError as err:
        raise CytotuneError(f"{space}: cannot read the study file: {err.strerror}") from err
    raw = {**raw, "name": f"scale_{raw['name']}", "storage": str(work / "ray_results")}
    raw["data_dir"] = str(work / "data")
    raw.pop("tracking_uri", None)
    if checkpoint_every_s is not None:
        raw["checkpoint_every_s"] = checkpoint_every_s
    raw["methods"] = [{**m, "resources": {"cpus": TRIAL_CPUS, "gpus": 1}} for m in raw["methods"]]
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    while trials is not None and _count(path)[0] > trials:
        axis = next((a for a in AXES if len(_axis(raw, a) or []) > 1), None)
        if axis is None:
            break
        _axis(raw, axis).pop()
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# --- the driver (a child process) ---------------------------------------------------------------------


class HttpCounter:
    """Counts and times MLflow's HTTP requests in this process (every module holding `http_request`)."""

    def __init__(self) -> None:
        self.calls = 0
        self.seconds = 0.0

    @contextlib.contextmanager
    def installed(self) -> Iterator[HttpCounter]:
        """Wrap mlflow.utils.rest_utils.http_request wherever it was imported, for the block."""
        from mlflow.utils import rest_utils

        original = rest_utils.http_request

        def counted(*args: Any, **kwargs: Any):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.calls += 1
                self.seconds += time.perf_counter() - start

        import mlflow.store.artifact.http_artifact_repo  # noqa: F401  (holds its own reference)

        holders = [m for m in list(sys.modules.values()) if getattr(m, "http_request", None) is original]
        for module in holders:
            module.http_request = counted
        try:
            yield self
        finally:
            for module in holders:
                module.http_request = original


@contextlib.contextmanager
def local_ray(slots: int, events: Path, lose_node_after: int | None = None) -> Iterator[None]:
    """A local Ray node with 2 CPUs declaring `slots` GPUs for the block. With `lose_node_after`, a
    multi-node `ray.cluster_utils.Cluster` instead: a head with the CPUs and two worker nodes with half the
    GPUs each, the second removed (its raylet killed) once that many trials ended."""
    import ray

    memory = 100 * 1024**2
    if lose_node_after is None:
        ray.init(
            address="local",
            num_cpus=2,
            num_gpus=slots,
            include_dashboard=False,
            object_store_memory=memory,
            log_to_driver=False,
        )
        try:
            yield
        finally:
            ray.shutdown()
        return
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "object_store_memory": memory})
    nodes = [cluster.add_node(num_cpus=1, num_gpus=slots // 2, object_store_memory=memory) for _ in range(2)]
    ray.init(address=cluster.address, log_to_driver=False)
    stop = threading.Event()

    def lose() -> None:
        while not stop.wait(0.5):
            if ended_trials(events) >= lose_node_after:
                print(
                    f"bench scale: removing a worker node after {lose_node_after} trials ended",
                    file=sys.stderr,
                )
                cluster.remove_node(nodes[1])
                return

    watcher = threading.Thread(target=lose, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        ray.shutdown()
        cluster.shutdown()


def drive(
    yaml_path: Path,
    tracking_uri: str,
    slots: int,
    seconds: float,
    resume: bool,
    lose_node_after: int | None = None,
) -> DriverFigures:
    """Run (or resume) the bench study in this process on Ray from `local_ray`."""
    from cytotune.bench.simulated import simulated_trainable
    from cytotune.study.grid import expand_cells
    from cytotune.study.launch import study_callback
    from cytotune.study.runner import run_study
    from cytotune.study.spec import load_study

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    spec = load_study(yaml_path)
    events = yaml_path.parent / "events.tsv"
    counter = HttpCounter()
    with local_ray(slots, events, lose_node_after):
        cells = expand_cells(spec)
        callback = study_callback(spec, cells, tracking_uri, resume=resume)
        trainable = simulated_trainable(seconds, events, spec.checkpoint_every_s)
        with counter.installed():
            before = resource.getrusage(resource.RUSAGE_SELF)
            outcome = run_study(
                spec,
                cells,
                tracking_uri=tracking_uri,
                resume=resume,
                callbacks=[callback],
                trainable=trainable,
                say=lambda line: print(line, file=sys.stderr, flush=True),
            )
            callback.close(interrupted=outcome.interrupted)
            after = resource.getrusage(resource.RUSAGE_SELF)
    return DriverFigures(
        trials=len(outcome.trials),
        wall_s=outcome.wall_s,
        driver_cpu_s=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        peak_rss_mb=after.ru_maxrss / 1024,
        mlflow_calls=counter.calls,
        mlflow_s=counter.seconds,
        counts=outcome.counts(),
        interrupted=outcome.interrupted,
    )


def _driver_process(
    yaml_path: Path, uri: str, slots: int, seconds: float, resume: bool, lose_node_after: int | None = None
) -> subprocess.Popen:
    """The bench driver (`drive`) in its own session. Ray starts at most as many worker processes at once as
    a node has CPUs; a real node with `slots` GPUs has at least as many CPUs, so its raylets here may start
    `slots` at once (with 2, trial actors start two at a time and the bench measures that, not Tune)."""
    args = json.dumps([str(yaml_path), uri, slots, seconds, resume, lose_node_after])
    folder = yaml_path.parent
    # stdout to a file, not a pipe: a driver writing more than a pipe holds while the bench waits for a
    # third of the trials would block
    with (folder / "driver.log").open("a") as log, (folder / DRIVER_OUT).open("a") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cytotune.bench.scale", args],
            stdout=out,
            stderr=log,
            text=True,
            start_new_session=True,
            env={**os.environ, "RAY_worker_maximum_startup_concurrency": str(slots)},
        )


def kill_session(sid: int) -> int:
    """SIGKILL every process of session `sid` (the driver's, with the Ray processes it started, which put
    themselves in process groups of their own); how many were killed."""
    killed = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            session = int(stat.read_text().rsplit(")", 1)[1].split()[3])
        except (OSError, IndexError, ValueError):
            continue
        if session == sid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(stat.parent.name), signal.SIGKILL)
                killed += 1
    return killed


def _driver_figures(process: subprocess.Popen, folder: Path) -> DriverFigures | None:
    """The figures the driver printed as its last JSON line, once it exited (None if it failed)."""
    process.wait()
    lines = [line for line in (folder / DRIVER_OUT).read_text().splitlines() if line.startswith("{")]
    return DriverFigures(**json.loads(lines[-1])) if process.returncode == 0 and lines else None


def _sum(parts: list[DriverFigures]) -> DriverFigures:
    counts = parts[-1].counts if parts else {}
    return DriverFigures(
        trials=parts[-1].trials if parts else 0,
        wall_s=sum(p.wall_s for p in parts),
        driver_cpu_s=sum(p.driver_cpu_s for p in parts),
        peak_rss_mb=max((p.peak_rss_mb for p in parts), default=0.0),
        mlflow_calls=sum(p.mlflow_calls for p in parts),
        mlflow_s=sum(p.mlflow_s for p in parts),
        counts=counts,
        interrupted=parts[-1].interrupted if parts else True,
    )


# --- reading back -------------------------------------------------------------------------------------


def _events(path: Path) -> list[list[str]]:
    if not path.is_file():
        return []
    return [line.split("\t") for line in path.read_text().splitlines() if line.count("\t") == 3]


def ended_trials(events: Path) -> int:
    """Trials that logged their end in the events file."""
    return len({key for key, event, *_ in _events(events) if event == "end"})


def rerun_counts(events: Path, recorded: set[str] = frozenset()) -> tuple[int, int, int]:
    """From the events file: trials started more than once, trials started again after they had ended, and
    of those the ones in `recorded` (whose end MLflow or the end journal held when the driver died)."""
    starts: Counter[str] = Counter()
    ended: set[str] = set()
    rerun: set[str] = set()
    for key, event, *_ in _events(events):
        if event == "start":
            starts[key] += 1
            if key in ended:
                rerun.add(key)
        elif event == "end":
            ended.add(key)
    return sum(1 for n in starts.values() if n > 1), len(rerun), len(rerun & recorded)


def recorded_ends(study: str, uri: str) -> set[str]:
    """Trial keys whose MLflow run ended (status tag finished or stopped)."""
    from mlflow import MlflowClient

    from cytotune.tracking import schema
    from cytotune.tracking.replay import ENDED
    from cytotune.tracking.runs import search_all

    runs = search_all(MlflowClient(uri), study, f"tags.`{schema.KIND}` = '{schema.KIND_TRIAL}'")
    return {run.data.tags[schema.TRIAL_KEY] for run in runs if run.data.tags.get(schema.STATUS) in ENDED}


def journaled_ends(spec: Any) -> set[str]:
    """Trial keys whose end (finished or stopped) the study's end journal holds (tracking/end_journal.py)."""
    from cytotune.study.runner import END_JOURNAL
    from cytotune.study.storage import study_storage
    from cytotune.tracking.end_journal import EndJournal
    from cytotune.tracking.schema import FINISHED, RUN_STATUS, STOPPED

    ended = {RUN_STATUS[FINISHED], RUN_STATUS[STOPPED]}
    journal = EndJournal(study_storage(spec.name, None, spec.storage).driver_dir / END_JOURNAL)
    return {end.trial_key for end in journal.read() if end.run_status in ended}


def reported_steps(events: Path) -> dict[str, set[int]]:
    """Per trial key, the steps whose report Ray Tune took (logged by the trainable once `tune.report`
    returned), from the events file."""
    out: dict[str, set[int]] = {}
    for key, event, step, _ in _events(events):
        if event == "step":
            out.setdefault(key, set()).add(int(step))
    return out


def mlflow_counts(study: str, uri: str, planned: set[str], steps: dict[str, set[int]]) -> dict[str, int]:
    """Trial runs of the study in MLflow: runs, duplicates (runs beyond one per trial key), planned trials
    without a run, and val_acc steps Tune received that the trial's runs lack."""
    from mlflow import MlflowClient

    from cytotune.tracking import schema
    from cytotune.tracking.runs import search_all

    client = MlflowClient(uri)
    runs = search_all(client, study, f"tags.`{schema.KIND}` = '{schema.KIND_TRIAL}'")
    by_key: dict[str, list[str]] = {}
    for run in runs:
        by_key.setdefault(run.data.tags.get(schema.TRIAL_KEY, ""), []).append(run.info.run_id)

    def logged(run_ids: list[str]) -> set[int]:
        return {m.step for run_id in run_ids for m in client.get_metric_history(run_id, "val_acc")}

    keys = sorted(steps)
    with ThreadPoolExecutor(8) as pool:
        have = dict(zip(keys, pool.map(lambda k: logged(by_key.get(k, [])), keys), strict=True))
    return {
        "runs": len(runs),
        "duplicates": sum(len(ids) - 1 for ids in by_key.values()),
        "trials_without_run": len(planned - set(by_key)),
        "metric_steps": sum(len(s) for s in steps.values()),
        "lost_steps": sum(len(steps[k] - have[k]) for k in keys),
    }


def planned_evaluations(spec: Any) -> dict[str, int]:
    """By trial key, how many evaluations the trials of a study's grid cells make (the plan, independent of
    what ran)."""
    from cytotune.bench.simulated import schedule
    from cytotune.study.grid import expand_cells

    plans = (
        cell.trial(values, seed, None)
        for cell in expand_cells(spec)
        for values in cell.grid_values()
        for seed in cell.seeds
    )
    return {plan.trial_key: len(schedule(plan.config.model_dump(mode="json"))) for plan in plans}


def simulated_s(steps: dict[str, set[int]], evaluations: dict[str, int], seconds: float) -> float:
    """The simulated seconds of every step some attempt of a trial reported (a trial's whole schedule lasts
    `seconds`): what the study's trials ran, counted the same for trials replayed on resume."""
    return sum(len(done) * seconds / evaluations[key] for key, done in steps.items() if key in evaluations)


def _timed_cli(*args: str) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", "from cytotune.cli import main; main()", *args], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise CytotuneError(f"bench scale: cytotune {args[0]} failed: {done.stderr.strip()[-300:]}")
    return time.perf_counter() - start


# --- the bench ------------------------------------------------------------------------------------------


def _wait_for_third(process: subprocess.Popen, events: Path, trials: int) -> bool:
    """Block until a third of the trials ended (True) or the driver exited first (False)."""
    while process.poll() is None:
        if ended_trials(events) >= trials / 3:
            return True
        time.sleep(0.5)
    return False


def bench_scale(
    space: Path,
    work: Path,
    tracking_uri: str,
    *,
    slots: int = 64,
    seconds: float = 1.0,
    trials: int | None = None,
    checkpoint_every_s: float | None = None,
    fault: str = "none",
    restart: Callable[[], None] | None = None,
    queries: bool = True,
    say: Callable[[str], None] = print,
) -> ScaleFigures:
    """Run the bench study of `space` (see module doc) in `work` against the MLflow at `tracking_uri` and
    return its figures. `restart` stops and starts the tracking server (fault mlflow-restart)."""
    if fault not in FAULTS:
        raise CytotuneError(f"bench scale: --fault {fault!r}; expected one of: {', '.join(FAULTS)}")
    if fault == "mlflow-restart" and restart is None:
        raise CytotuneError("bench scale: --fault mlflow-restart needs the bench's own tracking server")
    path = bench_yaml(space, work, trials, checkpoint_every_s)
    n_trials, spec = _count(path)
    events = work / "events.tsv"
    say(f"bench scale: {spec.name}: {n_trials} trials, {slots} slots, {seconds:g} s a trial, fault {fault}")
    parts: list[DriverFigures] = []
    lose = n_trials // 3 if fault == "node-loss" else None
    process = _driver_process(path, tracking_uri, slots, seconds, resume=False, lose_node_after=lose)
    launches = 1
    recorded: set[str] = set()
    journaled: set[str] = set()
    if fault in ("driver-kill", "mlflow-restart") and _wait_for_third(process, events, n_trials):
        if fault == "driver-kill":
            say(
                f"bench scale: killing the driver (pid {process.pid}) after {ended_trials(events)} trials "
                "ended"
            )
            kill_session(process.pid)
            process.wait()
            recorded = recorded_ends(spec.name, tracking_uri)
            journaled = journaled_ends(spec) - recorded
            say(
                f"bench scale: MLflow holds the end of {len(recorded)} trials, the driver's end journal "
                f"{len(journaled)} more"
            )
            process = _driver_process(path, tracking_uri, slots, seconds, resume=True)
            launches = 2
        else:
            say(f"bench scale: restarting the MLflow server after {ended_trials(events)} trials ended")
            restart()
    figures = _driver_figures(process, work)
    if figures is None:
        raise CytotuneError(f"bench scale: the driver failed; see {work / 'driver.log'}")
    parts.append(figures)
    evaluations, steps = planned_evaluations(spec), reported_steps(events)
    counts = mlflow_counts(spec.name, tracking_uri, set(evaluations), steps)
    restarted, rerun, recorded_rerun = rerun_counts(events, recorded | journaled)
    out = ScaleFigures(
        study=spec.name,
        trials=n_trials,
        slots=slots,
        seconds=seconds,
        fault=fault,
        launches=launches,
        driver=_sum(parts),
        restarted_trials=restarted,
        ended_rerun=rerun,
        recorded_ended=len(recorded),
        journaled_ended=len(journaled),
        recorded_rerun=recorded_rerun,
        simulated_s=simulated_s(steps, evaluations, seconds),
        load=" ".join(f"{x:.1f}" for x in os.getloadavg()),
        **counts,
    )
    if queries:
        out.best_s = _timed_cli(
            "best", "--experiment", spec.name, "--tracking-uri", tracking_uri, "--format", "json"
        )
        out.report_s = _timed_cli(
            "report", "--experiment", spec.name, "--tracking-uri", tracking_uri, "--out", str(work / "report")
        )
    return out


def table(columns: list[ScaleFigures]) -> str:
    """The figures side by side: one row per figure, one column per study."""
    rows = [c.row() for c in columns]
    names = list(rows[0]) if rows else []

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    width = max(len(n) for n in names)
    cols = [[cell(r[n]) for n in names] for r in rows]
    widths = [max(len(v) for v in col) for col in cols]
    lines = []
    for i, name in enumerate(names):
        values = (f"{col[i]:>{w}}" for col, w in zip(cols, widths, strict=True))
        lines.append(f"{name:<{width}}  " + "  ".join(values))
    return "\n".join(lines)


def figures_json(columns: list[ScaleFigures]) -> list[dict[str, Any]]:
    """The figures as JSON objects (the table's rows per study, the driver's own figures under "driver")."""
    return [{**c.row(), "driver": asdict(c.driver)} for c in columns]


if (
    __name__ == "__main__"
):  # the driver process: python -m cytotune.bench.scale '[yaml, uri, slots, s, resume]'
    yaml_arg, uri_arg, slots_arg, seconds_arg, resume_arg, lose_arg = json.loads(sys.argv[1])
    result = drive(Path(yaml_arg), uri_arg, int(slots_arg), float(seconds_arg), bool(resume_arg), lose_arg)
    print(json.dumps(asdict(result)), flush=True)
