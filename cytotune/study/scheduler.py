"""Early stopping within each cell: one ASHA per (cell key, seed), so a trial meets only the trials of its
cell that train on the same seeded sample (its few-shot set or fraction), i.e. the other searched values."""

from __future__ import annotations

from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from cytotune.study.spec import AshaSettings


class PerCellASHA(FIFOScheduler):
    """ASHA with rungs kept per cell (`config["cell_key"]`) and seed; cells without ASHA settings run on.

    `settings` maps a cell key to its AshaSettings (or None: no early stopping). Rungs are split by seed too:
    seeds draw different samples, and a lucky sample must not stop a good learning rate of another seed, which
    would leave the chosen configuration without all its seeds. The last rung does not stop a trial, so a
    surviving trial always reaches its own final step and reports its test metrics.
    """

    def __init__(self, settings: dict[str, AshaSettings | None]):
        super().__init__()
        self._settings = dict(settings)
        self._by_cell: dict[tuple[str, Any], AsyncHyperBandScheduler] = {}
        self._metric = "val_acc"

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        """Metric and mode are fixed by the study (val_acc, max); accept only those."""
        return metric in (None, "val_acc") and mode in (None, "max")

    def _asha(self, trial: Trial) -> AsyncHyperBandScheduler | None:
        cell = trial.config.get("cell_key")
        asha = self._settings.get(cell)
        if asha is None:
            return None
        key = (cell, trial.config.get("trial", {}).get("seed"))
        if key not in self._by_cell:
            self._by_cell[key] = AsyncHyperBandScheduler(
                time_attr=asha.time_attr,
                metric=asha.metric,
                mode="max",
                max_t=asha.max_steps,
                grace_period=asha.grace_period,
                reduction_factor=asha.reduction_factor,
                stop_last_trials=False,
            )
        return self._by_cell[key]

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        """Place the trial in its cell's bracket."""
        asha = self._asha(trial)
        if asha is not None:
            asha.on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        """Continue or stop the trial by its cell's rungs."""
        asha = self._asha(trial)
        if asha is None or trial.trial_id not in asha._trial_info:
            return TrialScheduler.CONTINUE
        return asha.on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        """Record the final result in the cell's rungs."""
        asha = self._asha(trial)
        if asha is not None and trial.trial_id in asha._trial_info:
            asha.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        """Forget a trial removed before it ran."""
        asha = self._asha(trial)
        if asha is not None and trial.trial_id in asha._trial_info:
            asha.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        """How many (cell, seed) rung sets exist and how many trials they have stopped."""
        stopped = sum(a._num_stopped for a in self._by_cell.values())
        return f"Using per-cell ASHA: {len(self._by_cell)} (cell, seed) rung sets, {stopped} trials stopped"
