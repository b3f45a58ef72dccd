"""A study's MLflow writer: a driver-side Ray Tune callback, a parent run per launch, a child per trial."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from ray.tune import Callback

from cytotune import __version__
from cytotune.metric_names import DONE_TRIAL, STEP, TEST_ACC, VAL_ACC, VAL_HISTORY
from cytotune.tracking import schema
from cytotune.tracking.confusion import confusion_figure
from cytotune.tracking.end_journal import EndJournal, TrialEnd, trial_end
from cytotune.tracking.lanes import Lanes
from cytotune.tracking.replay import replay_results
from cytotune.tracking.run_records import RunRecord, record_of_run, search_pages
from cytotune.tracking.runs import current_launch_ids, launches_of
from cytotune.tracking.uri import artifact_location, resolve_tracking_uri

_BATCH = 100  # MLflow's limit of params (and of tags) in one log_batch
_METRIC_BATCH = 1000  # ... and of metrics
WRITERS = 8  # trials whose MLflow writes run at once (MLflow's HTTP pool holds 10 connections)
INPUT_ATTEMPTS = 3  # log_inputs calls for one dataset input (see log_dataset_input)


class MlflowCallback(Callback):
    """Writes a study's runs to MLflow from the Ray driver (the only writer, so an SQLite file stays safe).

    Layout: experiment = study name; a parent run per launch (study YAML as artifact, its sha256, cytotune
    version, git commit, Ray address); a child run per trial (nested under the launch that first ran it) with
    the flattened TrialConfig as params, tags cell/trial key, Ray trial id and status (running, finished,
    stopped, failed), per-evaluation metrics by step, final metrics and, for finished trials, the files of the
    final checkpoint plus the confusion matrix as PNG. ASHA-stopped trials end KILLED with status "stopped".
    An interrupted launch ends KILLED, and so do the runs of its unfinished trials (status still "running");
    a launch in which a trial failed for good ends FAILED; runs a dead driver left RUNNING end as their status
    tag says (KILLED while it says running) when the study is launched again.
    With `resume`, a trial continues the child run holding its trial key (tagged with every launch id), so a
    resumed study never makes a second run for a trial; a trial replayed on resume (`replays`: its run
    ended after Tune's last snapshot) leaves its run as it ended. `expected_trials` (the study's trial
    count) tells an interrupted launch from a finished one; `cell_seeds` (seeds per cell key) is recorded
    on the launch run (cells.json), so queries know every cell's seeds without parsing the YAML again.
    Launch and trial runs carry MLflow's standard source tags (mlflow.user, mlflow.source.*); a trial run
    has its dataset as an input, its manifest digest as a param.

    Params, metrics, the dataset param and node tags are buffered per trial and written in one `log_batch`
    per flush: when Tune saves its experiment state (`get_state`, so a resumed study re-reports whatever a
    crash lost), when the trial ends (with its status tag) or errs, and when the launch ends. A flush the
    tracking server refuses (after MLflow's own retries) keeps the buffer for the next one.

    With an `end_journal` (the runner gives it the study's), each trial's end is also appended to that file
    before its writes are queued, so the ends a killed driver had not yet written reach their runs on resume
    (`recover_ends`), and those trials replay their end instead of training again (tracking/end_journal.py).

    Every write of a trial's run goes through `Lanes`: on background threads, in order per Ray trial (a
    pack's runs share its lane), different trials at once, so MLflow's round trips never hold up Ray Tune's
    controller. `get_state` and `close` wait for every write submitted before them; `wait()` does so for a
    caller that reads the runs back.
    """

    def __init__(
        self,
        study: str,
        tracking_uri: str | None = None,
        *,
        study_yaml: str | None = None,
        resume: bool = False,
        ray_address: str | None = None,
        expected_trials: int | None = None,
        cell_seeds: dict[str, int] | None = None,
        announcement: str | None = None,
    ):
        self.study = study
        self.expected_trials = expected_trials
        self.cell_seeds = cell_seeds
        self.announcement = announcement  # said on stderr when the launch starts (where tracking goes, why)
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.study_yaml = study_yaml
        self.resume = resume
        self.ray_address = ray_address
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self._client: MlflowClient | None = None
        # Keys are Ray trial ids (a pack's trials: PACK#INDEX). Written by the lanes: _runs (key -> run id),
        # _ended, _unended (key -> MLflow status of an end whose flush was refused); the rest by Tune.
        self._runs: dict[str, str] = {}
        self._openers: dict[str, Callable[[], str]] = {}  # key -> creates or continues its run; its id
        self._opened: set[str] = set()
        self._ending: set[str] = set()
        self._nodes: dict[str, str] = {}
        self._previous: dict[str, list[Any]] | None = None  # trial key -> its runs, latest first (resume)
        self._replayed: dict[str, str] = {}  # trial or pack key -> its run, replayed on resume (`replays`)
        self._replay_ids: set[str] = set()  # ... their keys in _runs
        self._claimed: set[str] = set()
        self._ended: set[str] = set()
        self._failed: set[str] = set()
        self._closed = False
        self._source: dict[str, str] = {}
        self._with_input: set[str] = set()
        self._buffer: dict[str, tuple[list[Metric], list[Param], list[RunTag]]] = {}
        self._buffer_lock = threading.Lock()
        self._unended: dict[str, str] = {}
        self._lanes = Lanes(WRITERS)
        self.end_journal: EndJournal | None = None
        self._configs: dict[str, dict[str, Any]] = {}  # key -> its Ray config (trial and cell key, ...)
        self._final_files: dict[str, tuple[str, str]] = {}  # key -> its final checkpoint (path, filesystem)
        self._creations: dict[str, dict[str, Any]] = {}  # key -> what its new run starts with

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (Ray keeps the run config) without the MLflow client and the buffer's lock, which are made
        again when needed."""
        return {**self.__dict__, "_client": None, "_buffer_lock": None, "_openers": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _buffer_lock=threading.Lock())

    def get_state(self) -> dict[str, Any] | None:
        """Tune saves its experiment state: write every buffered metric first, then drop the ends written from
        the end journal (nothing else to save)."""
        self.flush()
        self.wait()
        if self.end_journal is not None:
            self.end_journal.compact()
        return None

    def wait(self) -> None:
        """Block until every MLflow write submitted so far is done (or refused and kept)."""
        self._lanes.wait()

    def flush(self) -> None:
        """Submit a write of every trial's buffer (see `wait`)."""
        with self._buffer_lock:
            keys = list(self._buffer)
        for key in keys:
            self._submit(key, lambda key=key: self._write_buffer(key))

    def _lane(self, key: str) -> str:
        """The lane of a trial's writes: its Ray trial id."""
        return key

    def _submit(self, key: str, call: Any) -> None:
        self._lanes.submit(self._lane(key), call)

    def _add(
        self, key: str, metrics: list[Metric] = (), params: list[Param] = (), tags: list[RunTag] = ()
    ) -> None:
        """Buffer writes of a trial's run (Tune's thread)."""
        with self._buffer_lock:
            held = self._buffer.setdefault(key, ([], [], []))
            for into, items in zip(held, (metrics, params, tags), strict=True):
                into.extend(items)

    def _write_buffer(self, key: str) -> bool:
        """Write a trial's buffer in log_batch calls (in its lane); False when the server refused: the
        buffer is kept for the next flush."""
        with self._buffer_lock:
            metrics, params, tags = self._buffer.pop(key, ([], [], []))
        try:
            _log_batches(self.client, self._run_id(key), metrics, params, tags)
        except Exception as err:  # noqa: BLE001  (any transport or server error: keep, retry later)
            with self._buffer_lock:
                later = self._buffer.pop(key, ([], [], []))
                self._buffer[key] = tuple(a + b for a, b in zip((metrics, params, tags), later, strict=True))
            print(f"cytotune: MLflow refused a write ({err}); kept for the next flush", file=sys.stderr)
            return False
        return True

    @property
    def client(self) -> MlflowClient:
        """The MLflow client at this callback's tracking URI. Against a tracking server MLflow would print
        two "View run" lines to stdout at each run's end, after one more request (get_run) to name it: that
        is switched off (the study prints where its runs are once)."""
        if self._client is None:
            os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def setup(self, **info: Any) -> None:
        """Start the launch (Ray Tune calls this once, before any trial)."""
        self.start_launch()

    def start_launch(self) -> str:
        """Create the experiment if needed and this launch's parent run; return the parent run id."""
        if self.parent_run_id is not None:
            return self.parent_run_id
        if self.announcement:
            print(self.announcement, file=sys.stderr, flush=True)
        self.experiment_id = self._experiment_id()
        self._close_stale_runs()
        if self.resume and self._previous is None:
            self._previous = self._existing_trial_runs()
        self._source = schema.source_tags()
        tags = {
            **self._source,
            schema.KIND: schema.KIND_LAUNCH,
            schema.STUDY: self.study,
            schema.VERSION: __version__,
            schema.RAY_ADDRESS: self._ray_address(),
            schema.RESUME: str(self.resume).lower(),
        }
        commit = schema.git_commit()
        if commit:
            tags[schema.GIT_COMMIT] = commit
        if self.study_yaml is not None:
            tags[schema.YAML_SHA256] = schema.sha256_text(self.study_yaml)
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        name = f"{self.study} launch {stamp}" + (" (resume)" if self.resume else "")
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=name)
        self.parent_run_id = run.info.run_id
        if self.study_yaml is not None:
            self.client.log_text(self.parent_run_id, self.study_yaml, schema.STUDY_ARTIFACT)
        if self.cell_seeds is not None:
            self.client.log_dict(self.parent_run_id, self.cell_seeds, schema.CELLS_ARTIFACT)
        return self.parent_run_id

    def replays(
        self, packs: dict[str, dict[str, Any]], exclude: set[str] = frozenset()
    ) -> dict[str, dict[str, Any]]:
        """Before a resumed launch: by trial key, the report a trial Tune may start again makes instead of
        training, for those whose run in the study's current launches ended (tracking/replay.py); `packs`:
        the study's packs (pack key -> Ray config), `exclude`: the trials Tune's snapshot holds as ended.
        Those runs are then left as they ended."""
        experiment = self.client.get_experiment_by_name(self.study)
        if experiment is None:
            return {}
        self.experiment_id = experiment.experiment_id
        self._previous = self._existing_trial_runs()
        chain = current_launch_ids(self.client, self.study)

        def current(run: Any | None) -> RunRecord | None:
            record = None if run is None else record_of_run(run)
            return record if record is not None and launches_of(record) & chain else None

        trial_runs = {key: record for key, runs in self._previous.items() if (record := current(runs[0]))}
        pack_runs = {
            key: record
            for key in packs
            if key not in exclude and (record := current(self._previous_pack(key)))
        }
        replays = replay_results(trial_runs, packs, pack_runs, exclude)
        for key in replays:
            self._replayed[key] = (pack_runs if key in packs else trial_runs)[key].run_id
            for member in packs.get(key, {}).get(schema.PACK_KEY, []):
                self._replayed[member["trial_key"]] = trial_runs[member["trial_key"]].run_id
        trials = [key for key in replays if key not in packs]
        with ThreadPoolExecutor(WRITERS, thread_name_prefix="cytotune-history") as pool:
            histories = pool.map(self._val_history, [self._replayed[key] for key in trials])
            for key, history in zip(trials, histories, strict=True):
                replays[key][VAL_HISTORY] = history
        return replays

    def _val_history(self, run_id: str) -> list[list[float]]:
        """A run's val_acc as [step, value] pairs in the order they were logged."""
        metrics = self.client.get_metric_history(run_id, VAL_ACC)
        return [[m.step, m.value] for m in sorted(metrics, key=lambda m: (m.timestamp, m.step))]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Open (or continue) the trial's run and mark it running."""
        self._open(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        """Log the evaluation's metrics at its step; the final result also carries the final metrics."""
        key = self._open(trial)
        if key in self._replay_ids:
            return
        self._log_dataset(key, result)
        node = result.get("node_id")
        if node and self._nodes.get(key) != node:
            self._add(key, tags=[RunTag(schema.RAY_NODE_ID, node)])
            self._nodes[key] = node
        names = list(schema.STEP_METRICS)
        if result.get(DONE_TRIAL):
            names += [name for name in schema.FINAL_METRICS if name not in names]
        self._add(key, metrics=step_metrics(result, names, int(time.time() * 1000)))

    def _log_dataset(self, key: str, result: dict) -> None:
        """Once per run: the trial's dataset as an MLflow input, and its manifest digest as a param."""
        if key in self._with_input or not all(name in result for name in schema.DATASET_FIELDS):
            return
        dataset = schema.dataset_input(result)
        self._submit(key, lambda: log_dataset_input(self.client, self._run_id(key), dataset))
        self._add(key, params=[Param(schema.DATASET_DIGEST, str(result[schema.DATASET_DIGEST]))])
        self._with_input.add(key)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """End the trial's run: finished (with artifacts) when it reported its final result, else stopped."""
        key = trial.trial_id
        if key not in self._opened or key in self._replay_ids:
            return
        finished = bool((trial.last_result or {}).get(DONE_TRIAL))
        if finished:
            self._log_final_artifacts(key, trial.checkpoint, trial.config)
        self._end(key, schema.FINISHED if finished else schema.STOPPED)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """End the trial's run FAILED with the error text as a tag and as error.txt (a replayed trial's run
        keeps its end)."""
        key = self._open(trial)
        if key not in self._replay_ids:
            self._fail(key, _error_text(trial))

    def _fail(self, key: str, text: str) -> None:
        """End a trial's run FAILED: the error text as a tag and as error.txt."""
        self._add(key, tags=[RunTag(schema.ERROR, schema.clip_tag(text))])
        self._submit(key, lambda: self.client.log_text(self._run_id(key), text, "error.txt"))
        self._end(key, schema.FAILED)
        self._failed.add(key)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """End the launch: KILLED when interrupted (a trial left open, or fewer trials ended than the study
        has), else FINISHED; runs of trials left open end KILLED (their status stays "running")."""
        ended = sum(getattr(t, "status", "TERMINATED") in ("TERMINATED", "ERROR") for t in trials)
        short = self.expected_trials is not None and ended < self.expected_trials
        self.close(interrupted=short)

    def close(self, interrupted: bool = False) -> None:
        """Write what is buffered, then end the launch's open trial runs KILLED and its parent run KILLED
        (interrupted, or a trial run was open), FAILED (a trial failed) or FINISHED. Only the first call ends
        the launch."""
        self.flush()
        self.wait()
        for key, status in list(self._unended.items()):
            self._finish(key, status)
        left_open = [key for key in self._runs if key not in self._ended]
        for key in left_open:
            self.client.set_terminated(self._runs[key], status="KILLED")
            self._ended.add(key)
        if self.parent_run_id is not None and not self._closed:
            status = "KILLED" if interrupted or left_open else "FAILED" if self._failed else "FINISHED"
            self.client.set_terminated(self.parent_run_id, status=status)
            self._closed = True
        if self.end_journal is not None:
            self.end_journal.compact()

    def _experiment_id(self) -> str:
        experiment = self.client.get_experiment_by_name(self.study)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                self.client.restore_experiment(experiment.experiment_id)
            return experiment.experiment_id
        return self.client.create_experiment(
            self.study,
            artifact_location=artifact_location(self.tracking_uri, self.study),
            tags={schema.STUDY: self.study},
        )

    def _ray_address(self) -> str:
        try:
            import ray

            if ray.is_initialized():
                return ray.get_runtime_context().gcs_address
        except (ImportError, RuntimeError, AttributeError):
            pass
        return self.ray_address or "local"

    def _search(self, filter_string: str) -> list[Any]:
        return search_pages(self.client, [self.experiment_id], filter_string)

    def _existing_trial_runs(self) -> dict[str, list[Any]]:
        by_key: dict[str, list[Any]] = {}
        for run in self._search(f"tags.`{schema.KIND}` = '{schema.KIND_TRIAL}'"):
            by_key.setdefault(run.data.tags.get(schema.TRIAL_KEY, ""), []).append(run)
        for runs in by_key.values():
            runs.sort(key=lambda run: run.info.start_time or 0, reverse=True)
        return by_key

    def _close_stale_runs(self) -> None:
        """Runs left RUNNING by a driver that died end as their status tag says (a driver killed between
        writing a trial's end and ending its run), else KILLED (a resumed trial's run is opened again)."""
        for run in self._search("attributes.status = 'RUNNING'"):
            status = schema.RUN_STATUS.get(run.data.tags.get(schema.STATUS, ""), "KILLED")
            self.client.set_terminated(run.info.run_id, status=status)

    def _open(self, trial: Any) -> str:
        """Submit the opening of a trial's run (continued on resume, else created), once; its key."""
        key = trial.trial_id
        if key in self._opened:
            return key
        self._opened.add(key)
        self._configs[key] = trial.config
        if trial.config["trial_key"] in self._replayed:
            self._keep_ended(key, self._replayed[trial.config["trial_key"]])
            return key
        previous = self._previous_run(trial.config["trial_key"], key)
        if previous is not None:
            self._open_run(key, lambda: self._continue(previous, trial))
        else:
            tags, trial_json = self._run_tags(trial, schema.KIND_TRIAL), _trial_json(trial.config)
            if self.end_journal is not None:
                self._creations[key] = {"tags": tags, "trial": trial_json}
            self._open_run(key, lambda: self._create(trial.config["trial_key"], tags, trial_json))
        # with the first flush; again on resume (the same values: a driver that died before its first flush
        # left the run without them)
        params = schema.flatten_trial(trial.config["trial"]).items()
        self._add(key, params=[Param(name, value) for name, value in params])
        return key

    def _keep_ended(self, key: str, run_id: str) -> None:
        """A replayed trial's (or pack's) run: known under `key`, left as it ended."""
        self._runs[key] = run_id
        self._claimed.add(run_id)
        self._ended.add(key)
        self._replay_ids.add(key)

    def _previous_run(self, trial_key: str, ray_trial_id: str) -> Any | None:
        candidates = [
            run for run in (self._previous or {}).get(trial_key, []) if run.info.run_id not in self._claimed
        ]
        same_id = [run for run in candidates if run.data.tags.get(schema.RAY_TRIAL_ID) == ray_trial_id]
        chosen = (same_id or candidates or [None])[0]
        if chosen is not None:
            self._claimed.add(chosen.info.run_id)
        return chosen

    def _run_tags(self, trial: Any, kind: str) -> dict[str, str]:
        """The tags a Ray trial's new run starts with (kind: trial, or pack for a packed cell's Ray trial)."""
        config = trial.config
        tags = {
            schema.PARENT_RUN_ID: self.start_launch(),
            **self._source,
            schema.KIND: kind,
            schema.STUDY: self.study,
            schema.CELL_KEY: config["cell_key"],
            schema.TRIAL_KEY: config["trial_key"],
            schema.RAY_TRIAL_ID: trial.trial_id,
            schema.STATUS: schema.RUNNING,
            schema.SEARCHED: ",".join(sorted(config.get("searched", {}))),
            schema.LAUNCHES: self.parent_run_id,
        }
        if "resources" in config:
            tags[schema.RESOURCES] = json.dumps(config["resources"], sort_keys=True)
        return tags

    def _open_run(self, key: str, opener: Callable[[], str]) -> None:
        """Submit the opening of a trial's run; a write that finds it unopened (the server refused) opens it
        first."""
        self._openers[key] = opener
        self._submit(key, lambda: self._run_id(key))

    def _run_id(self, key: str) -> str:
        """The id of a trial's run, opened now if its opening was refused before (raises if refused again)."""
        if key not in self._runs:
            self._runs[key] = self._openers[key]()
            self._creations.pop(key, None)
        return self._runs[key]

    def _create(self, trial_key: str, tags: dict[str, str], trial_json: dict[str, Any]) -> str:
        """A new trial run with its tags and trial config file (its params come with the first flush)."""
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=trial_key)
        self.client.log_dict(run.info.run_id, trial_json, schema.TRIAL_ARTIFACT)
        return run.info.run_id

    def _continue(self, run: Any, trial: Any) -> str:
        run_id = run.info.run_id
        launches = run.data.tags.get(schema.LAUNCHES, "").split(",")
        launches = [launch for launch in launches if launch] + [self.start_launch()]
        tags = {
            schema.STATUS: schema.RUNNING,
            schema.RAY_TRIAL_ID: trial.trial_id,
            schema.LAUNCHES: ",".join(dict.fromkeys(launches)),
        }
        self.client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def _end(self, key: str, status: str) -> None:
        """Submit the end of a trial's run with `status` (its buffer written first), journaled first."""
        self._add(key, tags=[RunTag(schema.STATUS, status)])
        self._ending.add(key)
        if self.end_journal is not None and key in self._configs:
            self.end_journal.append(self._trial_end(key, schema.RUN_STATUS[status]))
        self._submit(key, lambda: self._finish(key, schema.RUN_STATUS[status]))

    def _trial_end(self, key: str, status: str) -> TrialEnd:
        """The end of a trial's run as the end journal keeps it: what its buffer holds now."""
        with self._buffer_lock:
            batch = tuple(list(items) for items in self._buffer.get(key, ([], [], [])))
        run_id = self._runs.get(key)
        create = None if run_id is not None else self._creation(key)
        files = self._final_files.get(key)
        return trial_end(key, self._configs[key], self.parent_run_id, run_id, status, batch, files, create)

    def _creation(self, key: str) -> dict[str, Any] | None:
        """What the new run of trial `key` starts with (None: it continues an earlier run)."""
        return self._creations.get(key)

    def _finish(self, key: str, status: str) -> None:
        """End the run with MLflow `status` once its buffer is written (else at `close`)."""
        if self._write_buffer(key):
            self.client.set_terminated(self._run_id(key), status=status)
            self._unended.pop(key, None)
            self._ended.add(key)
            if self.end_journal is not None:
                self.end_journal.written(key)
        else:
            self._unended[key] = status

    def recover_ends(self) -> int:
        """Before a resumed launch: write the ends the end journal holds (a killed driver's, not yet in
        MLflow) to their runs in the study's current launches, WRITERS at once, then clear it; how many were
        written. A write that fails raises once the others are done, and the journal is kept for the next
        resume (an end already written is not written again)."""
        if self.end_journal is None:
            return 0
        ends = self.end_journal.read()
        experiment = self.client.get_experiment_by_name(self.study) if ends else None
        written = 0
        if experiment is not None:
            self.experiment_id = experiment.experiment_id
            chain = current_launch_ids(self.client, self.study)
            current = [end for end in ends if end.launch in chain]
            with ThreadPoolExecutor(WRITERS, thread_name_prefix="cytotune-recover") as pool:
                futures = [pool.submit(self._recover_end, end, chain) for end in current]
            written = sum(future.result() for future in futures)  # every write ran; the first error raises
        self.end_journal.clear()
        return written

    def _recover_end(self, end: TrialEnd, chain: set[str]) -> bool:
        """Write one journaled end to its run (made first when its creation never reached MLflow); whether
        it was written."""
        run_id = end.run_id or self._run_of(end, chain)
        if run_id is None and end.create is not None:
            run_id = self._create(end.trial_key, end.create["tags"], end.create["trial"])
        return run_id is not None and self._write_end(run_id, end)

    def _run_of(self, end: TrialEnd, chain: set[str]) -> str | None:
        """The run of a journaled end whose run id was not yet known: its trial key's latest run in the
        study's current launches (None: its creation never reached MLflow)."""
        runs = self._search(f"tags.`{schema.TRIAL_KEY}` = '{end.trial_key}'")
        found = [run for run in runs if launches_of(record_of_run(run)) & chain]
        found.sort(key=lambda run: run.info.start_time or 0, reverse=True)
        return found[0].info.run_id if found else None

    def _write_end(self, run_id: str, end: TrialEnd) -> bool:
        """Write a journaled end to its run unless the run holds an end already; whether it was written."""
        if self.client.get_run(run_id).data.tags.get(schema.STATUS) not in (None, schema.RUNNING):
            return False
        _log_batches(self.client, run_id, *end.batch())
        checkpoint = _checkpoint(end.files)
        if checkpoint is not None:
            try:
                self._upload_final(run_id, checkpoint, {"cell_key": end.cell_key, "trial_key": end.trial_key})
            except OSError as err:  # pruned or unreachable: the end matters more than its files
                print(f"cytotune: {end.trial_key}: final files not uploaded ({err})", file=sys.stderr)
        self.client.set_terminated(run_id, status=end.run_status)
        return True

    def _log_final_artifacts(self, key: str, checkpoint: Any, config: dict[str, Any]) -> None:
        """Submit the upload of a finished trial's files and confusion matrix from its final checkpoint."""
        if checkpoint is not None:
            self._final_files[key] = (str(checkpoint.path), checkpoint.filesystem.type_name)
            self._submit(key, lambda: self._upload_final(self._run_id(key), checkpoint, config))

    def _upload_final(self, run_id: str, checkpoint: Any, config: dict[str, Any]) -> None:
        with checkpoint.as_directory() as folder:
            folder = Path(folder)
            for name in ("trial_manifest.csv", "result.json"):
                if (folder / name).is_file():
                    self.client.log_artifact(run_id, str(folder / name))
            for model in ("adapter", "head"):  # the LoRA adapter and head, or the probe's head
                if (folder / model).is_dir():
                    self.client.log_artifacts(run_id, str(folder / model), model)
            if (folder / "result.json").is_file():
                self._log_confusion(run_id, json.loads((folder / "result.json").read_text()), config)

    def _log_confusion(self, run_id: str, result: dict, config: dict[str, Any]) -> None:
        if not result.get("confusion_matrix") or not result.get("classes"):
            return
        cell, key = config["cell_key"], config["trial_key"]
        acc = result.get(TEST_ACC)
        title = cell + "\n" + key.removeprefix(cell + "/").replace("/", ", ")
        title += f": test accuracy {100 * acc:.2f}%" if _is_number(acc) else ""
        with tempfile.TemporaryDirectory() as tmp:
            path = confusion_figure(
                result["confusion_matrix"], result["classes"], Path(tmp) / "confusion_matrix.png", title
            )
            self.client.log_artifact(run_id, str(path))


def _log_batches(
    client: MlflowClient, run_id: str, metrics: list[Metric], params: list[Param], tags: list[RunTag]
) -> None:
    """log_batch within MLflow's limits per call (1000 metrics, 100 params, 100 tags, 1000 in all), the
    tags with the last metrics: a trial's end (its status tag, buffered last) is never written before its
    final metrics, even when a crash cuts the calls short."""
    while metrics or params or tags:
        p = params[:_BATCH]
        m = metrics[: _METRIC_BATCH - len(p) - _BATCH]
        t = tags[:_BATCH] if len(m) == len(metrics) else []
        client.log_batch(run_id, metrics=m, params=p, tags=t)
        metrics, params, tags = metrics[len(m) :], params[len(p) :], tags[len(t) :]


def log_dataset_input(client: MlflowClient, run_id: str, dataset: Any) -> None:
    """Log one dataset input of a run; again when the server's insert of the dataset met the same insert
    from another call. MLflow's SQL store looks the dataset up, then inserts it: when trials of one dataset
    first report side by side, the calls that lose the race fail (on PostgreSQL, as measured) with a
    unique-key error, and once the row exists a second call links it to the run."""
    from mlflow.exceptions import MlflowException

    for attempt in range(1, INPUT_ATTEMPTS + 1):
        try:
            client.log_inputs(run_id, datasets=[dataset])
            return
        except MlflowException as err:
            if attempt == INPUT_ATTEMPTS or not _is_unique_conflict(str(err)):
                raise


def _is_unique_conflict(message: str) -> bool:
    """Whether a server error is a unique-key violation (PostgreSQL, MySQL or SQLite wording)."""
    lowered = message.lower()
    return any(
        word in lowered
        for word in ("uniqueviolation", "duplicate key", "duplicate entry", "unique constraint")
    )


def _trial_json(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's config as its run's trial.json holds it (without the cache folder: each node has its own)."""
    return config["trial"].model_dump(mode="json", exclude={"cache_dir"})


def _checkpoint(files: tuple[str, str] | None) -> Any | None:
    """The final checkpoint a journaled end names (path, pyarrow filesystem type): local, S3 or GCS."""
    if files is None:
        return None
    from ray.tune import Checkpoint

    path, filesystem = files
    scheme = {"local": None, "s3": "s3", "gcs": "gs"}
    if filesystem not in scheme:
        return None
    return Checkpoint(path if scheme[filesystem] is None else f"{scheme[filesystem]}://{path}")


def step_metrics(result: dict, names: Any, stamp: int) -> list[Metric]:
    """The metrics `names` of a result (those that are numbers) at its step."""
    step = int(result.get(STEP, result.get("training_iteration", 0)))
    return [Metric(name, float(result[name]), stamp, step) for name in names if _is_number(result.get(name))]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _error_text(trial: Any) -> str:
    try:
        text = trial.get_error()
    except (OSError, ValueError, AttributeError):
        text = None
    return str(text) if text else f"trial {trial.trial_id} failed; Ray recorded no error text"
