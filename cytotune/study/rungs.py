"""Seed-grouped successive halving within one cell: the decision logic of the study's early stopping.

Pure Python, no Ray: the Ray scheduler (scheduler.py) and the offline replay of `cytotune bench asha` feed it
the same results. A configuration is a cell's searched values (all its seeds); a rung is a step count
grace_period * reduction_factor**k <= max_steps. When every seed of a configuration has reached a rung (its
value there is the val_acc of its first report at or past the rung), the configuration's mean over seeds is
compared with the means the cell's other configurations recorded at that rung (a configuration already stopped
records its mean all the same): below the (1 - 1/rf) quantile of those, the configuration is stopped, all its
seeds together; with nothing recorded yet it continues (as in asynchronous ASHA). A configuration that went on
from a rung is checked again at each later report against that rung's current cutoff over all configurations
recorded there: one that passed only because it arrived early is stopped once enough better configurations
have arrived, so the outcome depends less on the order in which configurations reach the rung. A seed that
reaches a rung before its siblings keeps training until they arrive.
A rung at or after a trial's last step decides nothing: a trial at its last step always completes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cytotune.study.spec import AshaSettings


def rung_steps(asha: AshaSettings) -> tuple[float, ...]:
    """The rungs of these settings, ascending: grace_period * reduction_factor**k up to max_steps."""
    rungs = []
    k = 0
    while asha.grace_period * asha.reduction_factor**k <= asha.max_steps * (1 + 1e-9):
        rungs.append(asha.grace_period * asha.reduction_factor**k)
        k += 1
    return tuple(rungs)


@dataclass
class CellRungs:
    """The rungs of one cell: per configuration, each seed's value at each rung, each rung's recorded means,
    and the configurations stopped. `seeds` is how many seeds every configuration of the cell has."""

    asha: AshaSettings
    seeds: int
    rungs: tuple[float, ...] = ()
    values: dict[str, dict[float, dict[int, float]]] = field(default_factory=dict)
    recorded: dict[float, dict[str, float]] = field(default_factory=dict)
    stopped: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.rungs = rung_steps(self.asha)
        self.recorded = {rung: {} for rung in self.rungs}

    def result(
        self, configuration: str, seed: int, step: float, value: float, last_step: float | None = None
    ) -> bool:
        """Record one evaluation of a seed of a configuration; True when that trial is to stop now.

        `last_step` is the trial's last step when known; a result at or after it never stops the trial.
        """
        at_end = last_step is not None and step >= last_step
        seen = self.values.setdefault(configuration, {})
        for rung in self.rungs:
            if step >= rung and (last_step is None or rung < last_step):
                seen.setdefault(rung, {}).setdefault(seed, float(value))
        self._decide(configuration)  # a stopped configuration's means are recorded too, as ASHA records all
        if configuration not in self.stopped:
            self._recheck(configuration)
        return configuration in self.stopped and not at_end

    def _decide(self, configuration: str) -> None:
        for rung in self.rungs:
            recorded = self.recorded[rung]
            if configuration in recorded:
                continue
            at_rung = self.values[configuration].get(rung, {})
            if len(at_rung) < self.seeds:
                return
            mean = float(np.mean(list(at_rung.values())))
            cutoff = self.cutoff(rung)
            recorded[configuration] = mean
            if cutoff is not None and mean < cutoff:
                self.stopped.add(configuration)
                return

    def _recheck(self, configuration: str) -> None:
        """Stop a configuration that passed a rung early but has since fallen below the rung's cutoff over
        every configuration recorded there (itself included)."""
        for rung in self.rungs:
            recorded = self.recorded[rung]
            if configuration in recorded and len(recorded) > 1:
                cutoff = float(np.nanpercentile(list(recorded.values()), self._quantile))
                if recorded[configuration] < cutoff:
                    self.stopped.add(configuration)
                    return

    @property
    def _quantile(self) -> float:
        return (1 - 1 / self.asha.reduction_factor) * 100

    def cutoff(self, rung: float) -> float | None:
        """The mean a configuration needs at this rung to go on (None: nothing recorded there yet)."""
        recorded = list(self.recorded[rung].values())
        if not recorded:
            return None
        return float(np.nanpercentile(recorded, self._quantile))

    def lose_seed(self, configuration: str) -> None:
        """A seed of this configuration ended for good without finishing: the configuration can no longer be
        complete on every seed, so its other seeds stop too."""
        self.stopped.add(configuration)

    def state(self) -> dict[str, Any]:
        """The rungs as plain Python values (`from_state` reads them back): what Tune's snapshots keep, so
        that another cytotune version can read them."""
        return {
            "asha": self.asha.model_dump(),
            "seeds": self.seeds,
            "values": {c: {rung: dict(seeds) for rung, seeds in v.items()} for c, v in self.values.items()},
            "recorded": {rung: dict(means) for rung, means in self.recorded.items()},
            "stopped": sorted(self.stopped),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> CellRungs:
        """The rungs `state()` gave."""
        rungs = cls(AshaSettings(**state["asha"]), int(state["seeds"]))
        values = state["values"].items()
        rungs.values = {c: {rung: dict(seeds) for rung, seeds in v.items()} for c, v in values}
        for rung, means in state["recorded"].items():
            rungs.recorded[rung] = dict(means)
        rungs.stopped = set(state["stopped"])
        return rungs
