"""Early stopping within each cell, seed-grouped: the Ray Tune side of `rungs.CellRungs`.

Decisions are made per (cell, searched configuration) on the mean over seeds of val_acc at each rung, against
the other configurations of the same cell only (rules in `rungs.py`: ASHA's cutoff, checked again at later
reports of a configuration that passed a rung early); all seeds of a configuration share one fate, so
selection always compares configurations over the same seeds. How a seed waits: a seed that reaches a rung
before its siblings keeps training (no pause, no checkpoint round trip) until the last sibling reaches the
rung and the configuration is decided; a configuration stopped then stops each of its seeds at that seed's
next report (a seed not yet started stops at its first). The study's searcher queues the seeds of a
configuration one after another, so they usually run side by side and the wait is short. A seed that fails
for good stops its siblings: the configuration can no longer finish on every seed. A trial's report at or
after its last step (`last_step` in the report, or the final report) never stops it, so a trial whose last
step is a rung completes. Tune saves a scheduler only as it was at the launch, so `RungsKeeper` (a callback)
puts the rungs in each of Tune's experiment snapshots and gives them back on resume: a resumed study decides
against the rungs of its last snapshot, as the uninterrupted study would have. Recording is idempotent (a
seed's first value at a rung is kept), so a trial that resumes from an earlier checkpoint and reports a rung
again changes nothing. What trials recorded after that snapshot, before the driver died, is not in them: it
comes back with the trials that ended since (tracking/replay.py), whose one report carries the validation
history MLflow holds of them, recorded at the rungs as it was reported; a seed replayed as stopped stops its
configuration's other seeds, as its stop did before the driver died. Trials still running at the kill
resume from the checkpoint of the snapshot and report the steps after it again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from cytotune.metric_names import (
    DONE_TRIAL,
    LAST_STEP,
    OBJECTIVE,
    OBJECTIVE_MODE,
    REPLAYED,
    STEP,
    VAL_HISTORY,
)
from cytotune.study.grid import CellPlan, configuration_key
from cytotune.study.packs import is_packed
from cytotune.study.rungs import CellRungs
from cytotune.study.spec import AshaSettings

log = logging.getLogger("cytotune.study")
RUNGS_STATE = 1  # the version of RungsKeeper's state (plain values; the first keeper saved CellRungs objects)


class SeedGroupedASHA(FIFOScheduler):
    """Seed-grouped ASHA with rungs kept per cell (`config["cell_key"]`); cells without ASHA settings run on.

    `settings` maps a cell key to its AshaSettings (or None: no early stopping) and `seeds` a cell key to
    the number of seeds each of its configurations runs.
    """

    def __init__(self, settings: dict[str, AshaSettings | None], seeds: dict[str, int]):
        super().__init__()
        self._settings = dict(settings)
        self._seeds = dict(seeds)
        self._cells: dict[str, CellRungs] = {}
        self._unended: dict[str, Trial] = {}  # trial id -> trial, in the order Tune added them

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        """Remember the trial for `choose_trial_to_run`."""
        self._unended.setdefault(trial.trial_id, trial)

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        """The first trial added that is pending (else paused), as FIFOScheduler chooses, but looking only at
        trials that have not ended: Tune asks at every step, and FIFOScheduler's scan of every trial of the
        study made a study of 10,000 trials quadratic."""
        paused = None
        for trial_id, trial in list(self._unended.items()):
            if trial.status in (Trial.TERMINATED, Trial.ERROR):
                del self._unended[trial_id]
            elif trial.status == Trial.PENDING:
                return trial
            elif trial.status == Trial.PAUSED and paused is None:
                paused = trial
        return paused

    @classmethod
    def for_cells(cls, cells: Iterable[CellPlan]) -> SeedGroupedASHA:
        """The scheduler of a study's cells (ASHA settings of each cell's block, its seeds). A packed cell has
        none here: its pack is its only trial and stops configurations inside itself (study/packs.py)."""
        cells = list(cells)
        settings = {c.cell_key: None if is_packed(c) else c.block.asha for c in cells}
        return cls(settings, {c.cell_key: len(c.seeds) for c in cells})

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        """Metric and mode are fixed by the study (val_acc, max); accept only those."""
        return metric in (None, OBJECTIVE) and mode in (None, OBJECTIVE_MODE)

    def _rungs(self, trial: Trial) -> CellRungs | None:
        cell = trial.config.get("cell_key")
        asha = self._settings.get(cell)
        if asha is None:
            return None
        if cell not in self._cells:
            self._cells[cell] = CellRungs(asha, self._seeds.get(cell, 1))
        return self._cells[cell]

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        """Continue or stop the trial by its configuration's seed mean at the cell's rungs."""
        rungs = self._rungs(trial)
        if result.get(REPLAYED):
            if rungs is not None:
                self._replayed(rungs, trial, result)
            return TrialScheduler.CONTINUE
        if rungs is None or result.get(DONE_TRIAL):
            return TrialScheduler.CONTINUE
        step, value = result.get(rungs.asha.time_attr), result.get(rungs.asha.metric)
        if step is None or value is None:
            return TrialScheduler.CONTINUE
        stop = rungs.result(
            configuration_key(trial.config["trial_key"]),
            trial.config["trial"].seed,
            step,
            value,
            result.get(LAST_STEP),
        )
        return TrialScheduler.STOP if stop else TrialScheduler.CONTINUE

    def _replayed(self, rungs: CellRungs, trial: Trial, result: dict) -> None:
        """Record what a trial that ended before the driver died reported at the rungs (its history), as
        when it reported it; a seed stopped then stops its configuration's other seeds too."""
        configuration = configuration_key(trial.config["trial_key"])
        finished = bool(result.get(DONE_TRIAL))
        last_step = result.get(STEP) if finished else None  # a stopped trial stopped before its last step
        for step, value in result.get(VAL_HISTORY, ()):
            rungs.result(configuration, trial.config["trial"].seed, step, value, last_step)
        if not finished:
            rungs.lose_seed(configuration)

    def on_trial_error(self, tune_controller, trial: Trial) -> None:
        """A seed failed for good: its configuration's other seeds stop at their next report."""
        rungs = self._rungs(trial)
        if rungs is not None:
            rungs.lose_seed(configuration_key(trial.config["trial_key"]))

    def rungs(self) -> dict[str, CellRungs]:
        """The rungs of each cell that has recorded any result, by cell key."""
        return {cell: rungs for cell, rungs in self._cells.items() if rungs.values}

    def restore_rungs(self, rungs: dict[str, CellRungs]) -> None:
        """Take back the rungs of an earlier launch of the study: those of cells whose ASHA settings and seeds
        are still this scheduler's (a cell whose settings changed starts afresh)."""
        for cell, kept in rungs.items():
            if kept.asha == self._settings.get(cell) and kept.seeds == self._seeds.get(cell, 1):
                self._cells[cell] = kept

    def debug_string(self) -> str:
        """How many cells keep rungs and how many configurations they have stopped."""
        stopped = sum(len(c.stopped) for c in self._cells.values())
        return f"Using seed-grouped ASHA: {len(self._cells)} cells, {stopped} configurations stopped"


class RungsKeeper(Callback):
    """The scheduler's rungs in Tune's experiment snapshots: Tune saves its callbacks' state with the
    searcher's at every snapshot and hands it back on resume, before any trial reports."""

    def __init__(self, scheduler: SeedGroupedASHA):
        self.scheduler = scheduler

    def get_state(self) -> dict[str, Any] | None:
        """The rungs recorded so far, as plain Python values (None before any: Tune then writes no callback
        state)."""
        rungs = self.scheduler.rungs()
        if not rungs:
            return None
        return {"version": RUNGS_STATE, "rungs": {cell: kept.state() for cell, kept in rungs.items()}}

    def set_state(self, state: dict[str, Any]) -> None:
        """Give the scheduler the rungs of the snapshot the study resumes from (rungs a newer cytotune saved
        are not read: its early stopping starts afresh)."""
        if state.get("version", RUNGS_STATE) > RUNGS_STATE:
            log.warning("early-stopping rungs saved by a newer cytotune: this resume starts them afresh")
            return
        self.scheduler.restore_rungs(_kept_rungs(state.get("rungs", {})))


def _kept_rungs(saved: dict[str, Any]) -> dict[str, CellRungs]:
    """The cells' rungs of a keeper's state (a cell whose state does not read starts afresh)."""
    kept = {}
    for cell, state in saved.items():
        try:
            kept[cell] = state if isinstance(state, CellRungs) else CellRungs.from_state(state)
        except (KeyError, TypeError, ValueError) as err:
            log.warning("early-stopping rungs of %s not read (%s): they start afresh", cell, err)
    return kept
