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

from mlflow.entities import Param, RunTag
from ray.tune import Checkpoint

from cytotune.metric_names import DONE_TRIAL
from cytotune.tracking import schema
from cytotune.tracking.callback import MlflowCallback, _error_text, step_metrics
from cytotune.tracking.schema import PACK_FINAL, PACK_KEY, PACK_RESULTS, is_pack_config


@dataclass
class PackMember:
    """One trial of a pack, shaped as the Ray trial the MlflowCallback would get for it alone: its key in
    the callback's runs (the pack's Ray trial id and its index) and its Ray config."""

    trial_id: str
    config: dict[str, Any]


class PackedMlflowCallback(MlflowCallback):
    """The study's MLflow writer (MlflowCallback) that also records packs: a pack run nested under the
    launch, a child run per trial of the pack nested under it. A child ends as its trial ended inside the
    pack: finished (with its files and confusion matrix), stopped at an in-pack rung or failed (a non-finite
    loss: the launch ends FAILED, as for a separate trial); a pack that fails for good fails every child
    still open. With `resume`, the pack and each child continue their runs (by key); a pack replayed on resume
    leaves them as they ended."""

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
        pack = self._pack_run(trial)
        if pack in self._replay_ids:
            return
        stamp = int(time.time() * 1000)
        self._add(pack, metrics=step_metrics(result, schema.STEP_METRICS, stamp))
        names = list(schema.STEP_METRICS)
        if result.get(DONE_TRIAL):
            names += [name for name in schema.FINAL_METRICS if name not in names]
        members = {**result.get(PACK_RESULTS, {}), **result.get(PACK_FINAL, {})}
        for index, metrics in members.items():
            key = _member_id(trial, index)
            self._log_dataset(key, result)
            self._add(key, metrics=step_metrics(metrics, names, stamp))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """End each trial's run as it ended inside the pack, then the pack's run."""
        if not is_pack_config(trial.config):
            return super().on_trial_complete(iteration, trials, trial, **info)
        if trial.trial_id not in self._opened or trial.trial_id in self._replay_ids:
            return
        final = (
            (trial.last_result or {}).get(PACK_FINAL) if (trial.last_result or {}).get(DONE_TRIAL) else None
        )
        if final is None:
            for member in self._members(trial):
                self._end(member.trial_id, schema.STOPPED)
            self._end(trial.trial_id, schema.STOPPED)
            return
        folder = Path(trial.checkpoint.path)  # the final checkpoint: Ray keeps it after the trial ended
        for index, member in enumerate(self._members(trial)):
            end = final.get(str(index), {})
            status = end.get("status", schema.STOPPED)
            if status == schema.FINISHED:
                checkpoint = Checkpoint(str(folder / str(index)), trial.checkpoint.filesystem)
                self._log_final_artifacts(member.trial_id, checkpoint, member.config)
            elif status == schema.FAILED:
                self._fail(member.trial_id, end.get("error") or "failed inside its pack; no error text")
                continue
            self._end(member.trial_id, status)
        self._end(trial.trial_id, schema.FINISHED)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """The pack failed for good: its run and every trial run still open end FAILED with its error."""
        if not is_pack_config(trial.config):
            return super().on_trial_error(iteration, trials, trial, **info)
        if self._pack_run(trial) in self._replay_ids:
            return
        text = _error_text(trial)
        for member in self._members(trial):
            if member.trial_id not in self._ending:
                self._fail(member.trial_id, text)
        self._fail(trial.trial_id, text)

    def _members(self, trial: Any) -> list[PackMember]:
        return [
            PackMember(_member_id(trial, index), config)
            for index, config in enumerate(trial.config[PACK_KEY])
        ]

    def _creation(self, key: str) -> dict[str, Any] | None:
        """A pack's trial runs nest under the pack's run: an end journaled before they existed makes none
        on resume (the trial trains again)."""
        return None if "#" in key else super()._creation(key)

    def _lane(self, key: str) -> str:
        """A pack's trials write in the pack's lane (their runs nest under its run)."""
        return key.partition("#")[0]

    def _pack_run(self, trial: Any) -> str:
        """Submit the opening of the pack's run (created, or continued on resume) and of its trials' runs,
        nested under it, once; the pack's key."""
        key = trial.trial_id
        if key in self._opened:
            return key
        self._opened.add(key)
        self._configs[key] = trial.config
        if trial.config["trial_key"] in self._replayed:
            self._keep_ended(key, self._replayed[trial.config["trial_key"]])
            for member in self._members(trial):
                self._open(member)
            return key
        previous = self._previous_pack(trial.config["trial_key"]) if self.resume else None
        if previous is not None:
            self._open_run(key, lambda: self._continue(previous, trial))
        else:
            tags = self._run_tags(trial, schema.KIND_PACK)
            self._open_run(key, lambda: self._create_pack(trial, tags))
        for member in self._members(trial):
            self._open(member)
            self._submit(member.trial_id, lambda member=member: self._nest(member.trial_id, key))
        return key

    def _nest(self, member: str, pack: str) -> None:
        tags = {schema.PARENT_RUN_ID: self._run_id(pack), schema.RAY_TRIAL_ID: pack}
        self.client.log_batch(self._run_id(member), tags=[RunTag(k, v) for k, v in tags.items()])

    def _create_pack(self, trial: Any, tags: dict[str, str]) -> str:
        config = trial.config
        members = config[PACK_KEY]
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


def _member_id(trial: Any, index: int | str) -> str:
    """The key of a pack's trial in the callback's runs: the pack's Ray trial id and the trial's index."""
    return f"{trial.trial_id}#{index}"
