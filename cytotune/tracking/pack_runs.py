"""MLflow runs of packed cells: the Ray trial of a pack is a run of kind "pack", each of its trials a child
run laid out exactly as a separate trial's (kind trial, params, tags, curves, final metrics, status and
artifacts).

`best`, `report` and selection read trial runs only, so a packed study reads back as the same study unpacked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from ray.tune import Checkpoint

from cytotune.tracking import schema
from cytotune.tracking.callback import MlflowCallback, _error_text, _is_number
from cytotune.tracking.schema import PACK_FINAL, PACK_KEY, PACK_RESULTS, is_pack_config
from cytotune.train.result import DONE_TRIAL, STEP


@dataclass
class PackMember:
    """One trial of a pack, shaped as the Ray trial the MlflowCallback would get for it alone: its key in
    the callback's runs (the pack's Ray trial id and its index), its Ray config and final checkpoint."""

    trial_id: str
    config: dict[str, Any]
    checkpoint: Checkpoint | None = None


class PackedMlflowCallback(MlflowCallback):
    """The study's MLflow writer (MlflowCallback) that also records packs: a pack run nested under the
    launch, a child run per trial of the pack nested under it. A child ends as its trial ended inside the
    pack: finished (with its files and confusion matrix), stopped at an in-pack rung or failed (a non-finite
    loss: the launch ends FAILED, as for a separate trial); a pack that fails for good fails every child
    still open. With `resume`, the pack and each child continue their runs (by key)."""

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Open (or continue) the pack's run and its trials' runs; other trials as MlflowCallback."""
        if not is_pack_config(trial.config):
            return super().on_trial_start(iteration, trials, trial, **info)
        self._pack_run(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        """Log each evaluated trial's metrics at its step in its run (final metrics with the last report),
        the pack's best in the pack run."""
        if not is_pack_config(trial.config):
            return super().on_trial_result(iteration, trials, trial, result, **info)
        pack_run = self._pack_run(trial)
        stamp = int(time.time() * 1000)
        self._log_metrics(pack_run, result, schema.STEP_METRICS, stamp)
        names = list(schema.STEP_METRICS)
        if result.get(DONE_TRIAL):
            names += [name for name in schema.FINAL_METRICS if name not in names]
        members = {**result.get(PACK_RESULTS, {}), **result.get(PACK_FINAL, {})}
        for index, metrics in members.items():
            run_id = self._runs[_member_id(trial, index)]
            self._log_dataset(run_id, result)
            self._log_metrics(run_id, metrics, names, stamp)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """End each trial's run as it ended inside the pack, then the pack's run."""
        if not is_pack_config(trial.config):
            return super().on_trial_complete(iteration, trials, trial, **info)
        if trial.trial_id not in self._runs:
            return
        final = (
            (trial.last_result or {}).get(PACK_FINAL) if (trial.last_result or {}).get(DONE_TRIAL) else None
        )
        if final is None:
            for member in self._members(trial):
                self._end(member, schema.STOPPED)
            self._end(trial, schema.STOPPED)
            return
        with trial.checkpoint.as_directory() as folder:
            for index, member in enumerate(self._members(trial)):
                end = final.get(str(index), {})
                status = end.get("status", schema.STOPPED)
                if status == schema.FINISHED:
                    member.checkpoint = Checkpoint.from_directory(str(Path(folder) / str(index)))
                    self._log_final_artifacts(self._runs[member.trial_id], member)
                elif status == schema.FAILED:
                    self._fail(member, end.get("error") or "failed inside its pack; no error text")
                    continue
                self._end(member, status)
        self._end(trial, schema.FINISHED)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """The pack failed for good: its run and every trial run still open end FAILED with its error."""
        if not is_pack_config(trial.config):
            return super().on_trial_error(iteration, trials, trial, **info)
        self._pack_run(trial)
        text = _error_text(trial)
        for member in self._members(trial):
            if self._runs[member.trial_id] not in self._ended:
                self._fail(member, text)
        self._fail(trial, text)

    def _members(self, trial: Any) -> list[PackMember]:
        return [
            PackMember(_member_id(trial, index), config)
            for index, config in enumerate(trial.config[PACK_KEY])
        ]

    def _pack_run(self, trial: Any) -> str:
        """The pack's run (created, or continued on resume) and its trials' runs, nested under it."""
        run_id = self._runs.get(trial.trial_id)
        if run_id is not None:
            return run_id
        config = trial.config
        previous = self._previous_pack(config["trial_key"]) if self.resume else None
        run_id = self._continue(previous, trial) if previous is not None else self._create_pack(trial)
        self._runs[trial.trial_id] = run_id
        for member in self._members(trial):
            child = self._run_of(member)
            tags = {schema.PARENT_RUN_ID: run_id, schema.RAY_TRIAL_ID: trial.trial_id}
            self.client.log_batch(child, tags=[RunTag(key, value) for key, value in tags.items()])
        return run_id

    def _create_pack(self, trial: Any) -> str:
        config = trial.config
        members = config[PACK_KEY]
        tags = self._run_tags(trial, schema.KIND_PACK)
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=config["trial_key"])
        shared = schema.flatten_trial(members[0]["trial"])
        params = [Param(name, value) for name, value in shared.items() if name not in ("lr", "seed")]
        params.append(Param("pack.trials", str(len(members))))
        self.client.log_batch(run.info.run_id, params=params)
        keys = [member["trial_key"] for member in members]
        self.client.log_dict(run.info.run_id, keys, schema.PACK_ARTIFACT)
        return run.info.run_id

    def _previous_pack(self, pack_key: str) -> Any | None:
        kind = f"tags.`{schema.KIND}` = '{schema.KIND_PACK}'"
        runs = self._search(f"{kind} and tags.`{schema.TRIAL_KEY}` = '{pack_key}'")
        runs.sort(key=lambda run: run.info.start_time or 0, reverse=True)
        return runs[0] if runs else None

    def _log_metrics(self, run_id: str, metrics: dict, names: Any, stamp: int) -> None:
        step = int(metrics.get(STEP, 0))
        batch = [
            Metric(name, float(metrics[name]), stamp, step) for name in names if _is_number(metrics.get(name))
        ]
        self._buffered(run_id)[0].extend(batch)  # written with the callback's batched flushes

    def _fail(self, trial: Any, text: str) -> None:
        run_id = self._runs[trial.trial_id]
        self.client.set_tag(run_id, schema.ERROR, schema.clip_tag(text))
        self.client.log_text(run_id, text, "error.txt")
        self._end(trial, schema.FAILED)
        self._failed.add(run_id)


def _member_id(trial: Any, index: int | str) -> str:
    """The key of a pack's trial in the callback's runs: the pack's Ray trial id and the trial's index."""
    return f"{trial.trial_id}#{index}"
