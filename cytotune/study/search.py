"""The study's Ray Tune searcher: grid trials in order, and one Optuna study per cell for Optuna searches.

Each Optuna suggestion (a configuration) runs once per seed, and Optuna is told what selection uses, once
every seed has ended: the mean over seeds of each trial's best validation accuracy when the configuration
finished on every seed; PRUNED when a seed was stopped early (early stopping stops all seeds of a
configuration together); FAIL when a seed failed for good. TPE draws its first `optuna.startup` suggestions
of a cell at random (default: a third of `samples`, 1 to 10; see OptunaSettings).
"""

from __future__ import annotations

import hashlib
import pickle
from collections import deque
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages.journal import JournalFileBackend, JournalStorage
from ray.tune.search import Searcher

from cytotune.metric_names import BEST_VAL_ACC, DONE_TRIAL, OBJECTIVE, OBJECTIVE_MODE, VAL_ACC
from cytotune.study.grid import CellPlan, format_value
from cytotune.study.packs import is_packed, pack_of
from cytotune.study.spec import OptunaDimension
from cytotune.tracking.schema import FAILED, FINISHED, STOPPED


def optuna_distribution(dim: OptunaDimension) -> BaseDistribution:
    """The Optuna distribution of a searched field (categorical choices by their key spelling)."""
    if dim.optuna == "categorical":
        return CategoricalDistribution([format_value(c) for c in dim.choices or ()])
    if dim.optuna == "int":
        return IntDistribution(int(dim.low), int(dim.high))
    return FloatDistribution(float(dim.low), float(dim.high), log=dim.optuna == "loguniform")


def _decode(dim: OptunaDimension, value: Any) -> Any:
    if dim.optuna != "categorical":
        return value
    return {format_value(c): c for c in dim.choices or ()}[value]


OPTUNA_DIRECTION = {"max": "maximize", "min": "minimize"}[OBJECTIVE_MODE]


def _sampler_seed(cell_key: str) -> int:
    return int(hashlib.sha1(cell_key.encode()).hexdigest()[:8], 16)


def trial_end(result: dict | None, error: bool) -> str:
    """How a trial ended as Tune tells the searcher: failed (error), finished (its final report, with
    done_trial) or stopped early."""
    if error:
        return FAILED
    return FINISHED if (result or {}).get(DONE_TRIAL) == 1 else STOPPED


def _grid_entries(cell: CellPlan) -> list[tuple[dict[str, Any] | None, int]]:
    """The (searched values, seed) of each Ray trial of a grid cell; a packed cell's one pack is (None, 0)."""
    if is_packed(cell):
        return [(None, 0)]
    return [(values, seed) for values in cell.grid_values() for seed in cell.seeds]


class CellSearcher(Searcher):
    """Suggests every trial of a study: the grid trials first (a packed cell's as one pack trial), then Optuna
    suggestions cell by cell in turn.

    `optuna_journal` is the file holding the Optuna studies (one per cell, named by cell key), so a resumed
    study continues them. Returns FINISHED once every trial has been suggested.
    """

    def __init__(self, cells: list[CellPlan], optuna_journal: Path | None = None):
        super().__init__(metric=OBJECTIVE, mode=OBJECTIVE_MODE)
        self._cells = {cell.cell_key: cell for cell in cells}
        self._journal = optuna_journal
        self._queue: deque[tuple[str, dict[str, Any] | None, int, int | None]] = deque(
            (cell.cell_key, values, seed, None)
            for cell in cells
            if not cell.uses_optuna
            for values, seed in _grid_entries(cell)
        )
        self._optuna_cells = [cell.cell_key for cell in cells if cell.uses_optuna]
        self._asked: dict[str, int] = {key: 0 for key in self._optuna_cells}
        self._turn = 0
        self._live: dict[str, tuple[str, int | None, int]] = {}
        self._best: dict[str, float] = {}
        self._pending: dict[tuple[str, int], dict[int, tuple[str, float | None]]] = {}  # seed -> end, best
        self._studies: dict[str, optuna.Study] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        """Metric and mode are fixed by the study (val_acc, max); accept only those."""
        return metric in (None, OBJECTIVE) and mode in (None, OBJECTIVE_MODE)

    def _study(self, cell_key: str) -> optuna.Study:
        if cell_key not in self._studies:
            storage = None
            if self._journal is not None:
                self._journal.parent.mkdir(parents=True, exist_ok=True)
                storage = JournalStorage(JournalFileBackend(str(self._journal)))
            study = optuna.create_study(
                storage=storage, study_name=cell_key, direction=OPTUNA_DIRECTION, load_if_exists=True
            )
            # seeded per cell and by the trials already there, so a resumed study does not redraw its past
            seed = _sampler_seed(cell_key) + len(study.get_trials(deepcopy=False))
            startup = self._cells[cell_key].block.optuna.startup_trials(self._cells[cell_key].n_suggestions)
            study.sampler = optuna.samplers.TPESampler(n_startup_trials=startup, seed=seed)
            # asked before this searcher's saved state, never told, not pending: lost with a dead driver
            known = {number for key, number in self._pending if key == cell_key}
            for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                if trial.number not in known and trial.number < self._asked[cell_key]:
                    study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            self._studies[cell_key] = study
        return self._studies[cell_key]

    def _ask_next(self) -> bool:
        """Ask the next cell in turn with budget left for one suggestion and queue it once per seed."""
        for _ in range(len(self._optuna_cells)):
            key = self._optuna_cells[self._turn % len(self._optuna_cells)]
            self._turn += 1
            cell = self._cells[key]
            if self._asked[key] >= cell.n_suggestions:
                continue
            trial = self._suggestion(key, self._asked[key])
            self._asked[key] += 1
            values = {path: _decode(cell.optuna[path], trial.params[path]) for path in cell.optuna}
            self._pending[(key, trial.number)] = {}
            self._queue.extend((key, values, seed, trial.number) for seed in cell.seeds)
            return True
        return False

    def _suggestion(self, key: str, number: int) -> optuna.trial.BaseTrial:
        """The cell's suggestion `number`: asked of Optuna, or the one the journal holds when it was asked
        after this searcher's saved state (a resumed study suggests it again, with the same trial keys, so a
        trial that ended before the driver died is not replaced by a new one)."""
        study = self._study(key)
        asked = {trial.number: trial for trial in study.get_trials(deepcopy=False)}
        if number in asked:
            return asked[number]
        return study.ask({path: optuna_distribution(d) for path, d in self._cells[key].optuna.items()})

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        """The Ray config of the next trial, or FINISHED when all have been suggested."""
        if not self._queue and not self._ask_next():
            return Searcher.FINISHED
        key, values, seed, number = self._queue.popleft()
        self._live[trial_id] = (key, number, seed)
        if values is None:
            return pack_of(self._cells[key]).ray_config()
        return self._cells[key].trial(values, seed, number).ray_config()

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Keep the trial's best validation accuracy so far."""
        value = result.get(BEST_VAL_ACC, result.get(VAL_ACC))
        if value is not None and trial_id in self._live:
            self._best[trial_id] = max(float(value), self._best.get(trial_id, float("-inf")))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Record how the trial ended and its best; tell Optuna once every seed of its suggestion ended."""
        if result:
            self.on_trial_result(trial_id, result)
        if trial_id not in self._live:
            return
        key, number, seed = self._live.pop(trial_id)
        best = self._best.pop(trial_id, None)
        if number is None:
            return
        ended = self._pending[(key, number)]
        ended[seed] = (trial_end(result, error), best)
        if len(ended) == len(self._cells[key].seeds):
            self._tell(key, number)

    def _tell(self, key: str, number: int) -> None:
        ends = list(self._pending.pop((key, number)).values())
        study = self._study(key)
        if all(end == FINISHED and best is not None for end, best in ends):
            study.tell(number, sum(best for _, best in ends) / len(ends), skip_if_finished=True)
        elif any(end == STOPPED for end, _ in ends) and not any(end == FAILED for end, _ in ends):
            study.tell(number, state=optuna.trial.TrialState.PRUNED, skip_if_finished=True)
        else:
            study.tell(number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)

    def get_state(self) -> dict[str, Any]:
        """Everything but the open Optuna studies (they live in the journal file)."""
        state = dict(self.__dict__)
        state["_studies"] = {}
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from a saved state; Optuna studies reopen from the journal on first use."""
        self.__dict__.update(state)

    def __getstate__(self) -> dict[str, Any]:
        return self.get_state()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.set_state(state)

    def save(self, checkpoint_path: str) -> None:
        """Write the searcher's state for Tuner.restore."""
        Path(checkpoint_path).write_bytes(pickle.dumps(self.get_state()))

    def restore(self, checkpoint_path: str) -> None:
        """Read a state written by `save`."""
        self.set_state(pickle.loads(Path(checkpoint_path).read_bytes()))
