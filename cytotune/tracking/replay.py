"""What a resumed study's trials that had already ended report, instead of training again.

On resume, Ray Tune starts again every trial that its last experiment snapshot holds as not ended. Tune
snapshots every few minutes, so a trial that ended after the last snapshot, before the driver died, is among
them, although its MLflow run already ended: finished (final metrics and files written) or stopped early by
ASHA. Such a trial makes one report of that end and returns: the run's latest metrics, REPLAYED 1, and for a
finished trial done_trial 1 and its step count (the MLflow callback adds its val_acc history, VAL_HISTORY, for
the scheduler's rungs). So the study's outcome, the searcher's record and the MLflow run stay those of the
trial's only training. A trial whose run did not end (status running, or failed) is not replayed: it continues
from its checkpoint, as before.

A pack (study/packs.py) is replayed when its run and every trial run of it ended; its report carries each
trial's end under PACK_FINAL, as its own final report did.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from cytotune.metric_names import BEST_VAL_ACC, DONE_TRIAL, REPLAYED, STEP, VAL_ACC
from cytotune.tracking import schema
from cytotune.tracking.run_records import RunRecord
from cytotune.tracking.schema import PACK_FINAL, PACK_KEY

ENDED = (schema.FINISHED, schema.STOPPED)  # ends a Ray trial's run keeps across a resume
PACK_TRIAL_ENDS = (schema.FINISHED, schema.STOPPED, schema.FAILED)  # a finished pack's trials end so


def replay_results(
    trial_runs: Mapping[str, RunRecord],
    packs: Mapping[str, dict[str, Any]],
    pack_runs: Mapping[str, RunRecord],
    exclude: Collection[str] = (),
) -> dict[str, dict[str, Any]]:
    """By trial key, the report a trial Tune may start again makes instead of training, for those whose run
    ended: each trial of `trial_runs` (its latest run in the study's current launches) outside the packs, and
    each pack of `packs` (pack key -> Ray config; `pack_runs`: its run), but none in `exclude` (the trials
    Tune's snapshot holds as ended: Tune starts none of them again)."""
    members = {member["trial_key"] for config in packs.values() for member in config[PACK_KEY]}
    out = {}
    for key, run in trial_runs.items():
        result = None if key in exclude or key in members else trial_replay(run)
        if result is not None:
            out[key] = result
    for key, config in packs.items():
        runs = [trial_runs.get(member["trial_key"]) for member in config[PACK_KEY]]
        result = None if key in exclude else pack_replay(pack_runs.get(key), runs)
        if result is not None:
            out[key] = result
    return out


def trial_replay(run: RunRecord | None) -> dict[str, Any] | None:
    """The report of a trial whose run ended (None: it did not, or never reported a validation accuracy)."""
    status = None if run is None else run.tags.get(schema.STATUS)
    if status not in ENDED or VAL_ACC not in run.metrics:
        return None
    result: dict[str, Any] = {**run.metrics, REPLAYED: 1}
    if status == schema.FINISHED:
        result[DONE_TRIAL] = 1
        if "steps" in run.metrics:
            result[STEP] = int(run.metrics["steps"])
    return result


def pack_replay(pack: RunRecord | None, members: list[RunRecord | None]) -> dict[str, Any] | None:
    """The report of a pack whose run ended, with its trials' ends when it finished (None: the pack, or one
    of its trials, did not end)."""
    status = None if pack is None else pack.tags.get(schema.STATUS)
    if status not in ENDED:
        return None
    if status == schema.STOPPED:
        return {**pack.metrics, VAL_ACC: pack.metrics.get(VAL_ACC, float("nan")), REPLAYED: 1}
    if any(m is None or m.tags.get(schema.STATUS) not in PACK_TRIAL_ENDS for m in members):
        return None
    final = {str(index): _member_end(member) for index, member in enumerate(members)}
    bests = [end[BEST_VAL_ACC] for end in final.values() if end["status"] == schema.FINISHED]
    best = max(bests, default=float("nan"))
    steps = [int(end[STEP]) for end in final.values() if STEP in end]
    return {
        VAL_ACC: best,
        BEST_VAL_ACC: best,
        **({STEP: max(steps)} if steps else {}),
        DONE_TRIAL: 1,
        REPLAYED: 1,
        PACK_FINAL: final,
    }


def _member_end(run: RunRecord) -> dict[str, Any]:
    """A pack trial's end as the pack's final report carries it (see pack_trainable._final_metrics)."""
    end: dict[str, Any] = {
        **run.metrics,
        "status": run.tags[schema.STATUS],
        "error": run.tags.get(schema.ERROR),
        BEST_VAL_ACC: run.metrics.get(BEST_VAL_ACC, float("nan")),
    }
    if "steps" in run.metrics:
        end[STEP] = int(run.metrics["steps"])
    return end
