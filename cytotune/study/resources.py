"""Whether a cluster can run a study's trials: per-trial CPU/GPU asks against the nodes' resources."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from cytotune.study.grid import CellPlan

PENDING_ENV = "TUNE_MAX_PENDING_TRIALS_PG"


@dataclass(frozen=True)
class Fit:
    """The cells to run (GPU asks dropped where CPU fallback applied) and what was decided, in lines."""

    cells: list[CellPlan]
    notes: list[str]
    problems: list[str]

    @property
    def ok(self) -> bool:
        """True when every trial fits on some node."""
        return not self.problems


def _fits(ask: dict[str, float], node: dict[str, float]) -> bool:
    return all(node.get(name, 0.0) >= amount for name, amount in ask.items() if amount > 0)


def fit_cells(cells: list[CellPlan], nodes: list[dict[str, float]], where: str) -> Fit:
    """Check each block's per-trial resources against the nodes (Ray resource dicts of live nodes).

    GPUs asked of a cluster without GPUs are dropped (trials run on CPU) when the block allows CPU fallback;
    otherwise, and for any ask no single node can hold, a problem line says what and where.
    """
    total_gpus = sum(node.get("GPU", 0.0) for node in nodes)
    notes: list[str] = []
    problems: list[str] = []
    out: list[CellPlan] = []
    decided: set[int] = set()
    for cell in cells:
        ask, block = cell.resources, cell.block
        first = cell.block_index not in decided
        decided.add(cell.block_index)
        field = f"{where}: methods[{cell.block_index}].resources"
        if ask["GPU"] > 0 and total_gpus == 0:
            if block.resources.allow_cpu_fallback:
                if first:
                    notes.append(f"{field}: the cluster has no GPU; running {block.label} trials on CPU")
                train = cell.template.train.model_copy(update={"device": "cpu"})
                cell = dataclasses.replace(
                    cell,
                    resources={**ask, "GPU": 0.0},
                    template=cell.template.model_copy(update={"train": train}),
                )
            elif first:
                problems.append(
                    f"{field}.gpus: {ask['GPU']:g} GPU per trial asked, but the cluster has no GPU; expected "
                    "gpus: 0 or allow_cpu_fallback: true"
                )
        elif not any(_fits(ask, node) for node in nodes) and first:
            biggest = max(nodes, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)), default={})
            problems.append(
                f"{field}: a trial asks {ask['CPU']:g} CPU and {ask['GPU']:g} GPU, but no node has that much "
                f"(largest: {biggest.get('CPU', 0.0):g} CPU, {biggest.get('GPU', 0.0):g} GPU); expected less"
            )
        out.append(cell)
    return Fit(out, notes, problems)


def local_nodes(num_cpus: int, num_gpus: int) -> list[dict[str, float]]:
    """The single node a local Ray instance would have."""
    return [{"CPU": float(num_cpus), "GPU": float(num_gpus)}]


def trial_slots(cells: list[CellPlan], nodes: list[dict[str, float]]) -> int:
    """How many trials the nodes can run at once: per node, as many of the smallest per-trial ask as fit
    (at least 1)."""

    def fits(ask: dict[str, float], node: dict[str, float]) -> int:
        counts = [int(node.get(name, 0.0) // amount) for name, amount in ask.items() if amount > 0]
        return min(counts) if counts else 0

    asks = [cell.resources for cell in cells]
    return max(1, sum(max((fits(ask, node) for ask in asks), default=0) for node in nodes))


@contextmanager
def pending_trials_limit(cells: list[CellPlan], nodes: list[dict[str, float]]) -> Iterator[int]:
    """Let Ray Tune keep as many trials pending as the nodes can run at once (with a searcher of its own, Tune
    keeps one pending at a time, so trials start one by one); $TUNE_MAX_PENDING_TRIALS_PG, when set, wins."""
    given = os.environ.get(PENDING_ENV)
    limit = int(given) if given else trial_slots(cells, nodes)
    os.environ[PENDING_ENV] = str(limit)
    try:
        yield limit
    finally:
        if given is None:
            os.environ.pop(PENDING_ENV, None)
