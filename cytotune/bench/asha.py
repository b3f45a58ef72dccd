"""`cytotune bench asha`: what seed-grouped early stopping saves and whether it changes what cells choose.

The bench study (LoRA few-shot on synthetic data, tiny backbones, 5 learning rates x 3 seeds x 6 cells) runs
once as a full grid, every trial to its last step, recording each trial's validation curve (no Ray). The
early-stopping study is then replayed offline: the recorded reports are fed, in the order a cluster running
`workers` trials at a time would deliver them, to the scheduler's own decision logic (rungs.CellRungs), in
several arrival orders; a stopped trial counts the steps it trained up to the report that stopped it. The
same selection (tracking.selection.select_best) then runs on both.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cytotune.errors import CytotuneError
from cytotune.study.grid import CellPlan, configuration_key
from cytotune.study.rungs import CellRungs
from cytotune.study.spec import AshaSettings, StudySpec, load_study
from cytotune.tracking.selection import select_best
from cytotune.train.result import BEST_VAL_ACC, STEP, TEST_ACC, VAL_ACC

BENCH_YAML = """\
# cytotune bench asha: the same study with and without early stopping
name: asha-bench
backbones: [tiny_clip, tiny_vit]
datasets:
  - {{name: synthetic, root: {root}}}
seeds: [1, 2, 3]
train: {{device: cpu, image_cache_size: 32, batch_size: 8, eval_batch_size: 64, warmup_steps: 5}}
methods:
  - method: lora
    shots: [1, 2, 4]
    lora: {{rank: 2, targets: [q, v]}}
    search:
      lr: [3.0e-4, 1.0e-3, 3.0e-3, 1.0e-2, 3.0e-2]
    train: {{base_steps: 30, steps_per_shot: 10, eval_every: 5}}
    asha: {{grace_period: {grace}, reduction_factor: {factor}, max_steps: 70}}
"""
BENCH_IMAGES_PER_CLASS = 100


@dataclass(frozen=True)
class TrialCurve:
    """One full-grid trial: cell, configuration, lr, seed, last step, validation curve and final metrics."""

    cell_key: str
    configuration: str
    lr: float
    seed: int
    last_step: int
    steps: tuple[int, ...]
    val_acc: tuple[float, ...]
    best_val_acc: float
    test_acc: float


@dataclass(frozen=True)
class Replay:
    """One arrival order: steps trained per trial (by index in the curves) and the trials stopped early."""

    order: int
    steps: tuple[int, ...]
    stopped: frozenset[int]


@dataclass(frozen=True)
class Agreement:
    """One replay against the full grid: steps of each, cells, cells choosing the same configuration, and
    cells whose choice's test accuracy lies within the full grid's choice's seed std of it."""

    order: int
    full_steps: int
    es_steps: int
    cells: int
    same: int
    within_std: int

    @property
    def ratio(self) -> float:
        """Steps with early stopping over the full grid's."""
        return self.es_steps / self.full_steps

    @property
    def agreement(self) -> float:
        """Share of cells whose choice equals the full grid's or lies within its seed std."""
        return (self.same + self.within_std) / self.cells


def bench_spec(work_dir: Path, grace: int = 10, factor: float = 3.0) -> StudySpec:
    """The bench study, its synthetic dataset generated under work_dir if missing."""
    from cytotune.data.synthetic import generate_synthetic

    data = work_dir / "synthetic"
    if not data.exists():
        generate_synthetic(data, per_class=BENCH_IMAGES_PER_CLASS)
    path = work_dir / "asha_bench.yaml"
    path.write_text(BENCH_YAML.format(root=data.resolve(), grace=grace, factor=factor))
    return load_study(path)


def record_curves(
    cells: Sequence[CellPlan], cache_dir: Path, say: Callable[[str], None] = lambda _: None
) -> list[TrialCurve]:
    """Run every trial of these grid cells to its last step (no early stopping) and keep its curve."""
    from cytotune.train import run_trial

    curves = []
    for cell in cells:
        for values in cell.grid_values():
            for seed in cell.seeds:
                plan = cell.trial(values, seed)
                reports: list[dict] = []
                cfg = plan.config.model_copy(update={"cache_dir": cache_dir})
                result = run_trial(cfg, report=lambda metrics, _, out=reports: out.append(metrics))
                curves.append(
                    TrialCurve(
                        cell_key=cell.cell_key,
                        configuration=configuration_key(plan.trial_key),
                        lr=float(cfg.lr),
                        seed=seed,
                        last_step=int(result.steps),
                        steps=tuple(int(r[STEP]) for r in reports),
                        val_acc=tuple(float(r[VAL_ACC]) for r in reports),
                        best_val_acc=float(result.best_val_acc),
                        test_acc=float(result.test_acc),
                    )
                )
                say(f"{plan.trial_key}: best val {result.best_val_acc:.3f}, test {result.test_acc:.3f}")
    return curves


def save_curves(curves: Sequence[TrialCurve], path: Path) -> Path:
    """Write recorded curves as JSON."""
    path.write_text(json.dumps([asdict(c) for c in curves], indent=0))
    return path


def load_curves(path: Path) -> list[TrialCurve]:
    """Curves written by `save_curves`; CytotuneError when the file is not such a list."""
    try:
        rows = json.loads(Path(path).read_text())
        return [TrialCurve(**{**r, "steps": tuple(r["steps"]), "val_acc": tuple(r["val_acc"])}) for r in rows]
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise CytotuneError(f"{path}: not a curves file ({err}); expected one written by bench asha") from err


def replay(
    curves: Sequence[TrialCurve],
    settings: dict[str, AshaSettings],
    seeds: dict[str, int],
    order: int,
    workers: int,
) -> Replay:
    """Feed the recorded reports to the scheduler's decision logic as `workers` trials at a time would
    deliver them. Trials start in the searcher's order (cell by cell, the seeds of a configuration one after
    another); order 0 keeps the grid order and equal speeds, order k > 0 shuffles the configurations within
    each cell and gives each trial its own speed (0.6x to 1.4x), drawn from seed k."""
    rng = np.random.default_rng(order)
    queue: list[int] = []
    for cell in dict.fromkeys(c.cell_key for c in curves):
        configurations = list(dict.fromkeys(c.configuration for c in curves if c.cell_key == cell))
        if order:
            configurations = [configurations[i] for i in rng.permutation(len(configurations))]
        for configuration in configurations:
            queue += [i for i, c in enumerate(curves) if c.configuration == configuration]
    speed = np.ones(len(curves)) if order == 0 else rng.uniform(0.6, 1.4, len(curves))
    rungs = {cell: CellRungs(asha, seeds[cell]) for cell, asha in settings.items()}
    trained = [0] * len(curves)
    stopped: set[int] = set()
    events: list[tuple[float, int, int]] = []  # (time, trial, report index)

    def start(trial: int, now: float) -> None:
        heapq.heappush(events, (now + curves[trial].steps[0] * speed[trial], trial, 0))

    pending = iter(queue)
    for trial in [next(pending, None) for _ in range(workers)]:
        if trial is not None:
            start(trial, 0.0)
    while events:
        now, trial, k = heapq.heappop(events)
        curve = curves[trial]
        step = curve.steps[k]
        trained[trial] = step
        stop = rungs[curve.cell_key].result(
            curve.configuration, curve.seed, step, curve.val_acc[k], curve.last_step
        )
        if stop:
            stopped.add(trial)
        if stop or k + 1 == len(curve.steps):
            following = next(pending, None)
            if following is not None:
                start(following, now)
            continue
        heapq.heappush(events, (now + (curve.steps[k + 1] - step) * speed[trial], trial, k + 1))
    return Replay(order, tuple(trained), frozenset(stopped))


def choices(curves: Sequence[TrialCurve], stopped: frozenset[int], seeds: dict[str, int]) -> pd.DataFrame:
    """select_best over the trials, those in `stopped` counted as stopped early."""
    frame = pd.DataFrame(
        {
            "cell_key": c.cell_key,
            "status": "stopped" if i in stopped else "finished",
            "seed": c.seed,
            "lr": c.lr,
            BEST_VAL_ACC: c.best_val_acc,
            TEST_ACC: c.test_acc,
        }
        for i, c in enumerate(curves)
    )
    return select_best(frame, ("lr",), seeds).set_index("cell_key")


def compare(curves: Sequence[TrialCurve], run: Replay, seeds: dict[str, int]) -> Agreement:
    """A replay's steps and choices against the full grid's."""
    full = choices(curves, frozenset(), seeds)
    early = choices(curves, run.stopped, seeds)
    same = within = 0
    for cell, chosen in full.iterrows():
        other = early.loc[cell]
        if other["lr"] == chosen["lr"]:
            same += 1
        elif abs(other["test_acc_mean"] - chosen["test_acc_mean"]) <= chosen["test_acc_std"]:
            within += 1
    return Agreement(
        order=run.order,
        full_steps=sum(c.last_step for c in curves),
        es_steps=sum(run.steps),
        cells=len(full),
        same=same,
        within_std=within,
    )


def bench_asha(
    curves: Sequence[TrialCurve], cells: Sequence[CellPlan], orders: int, workers: int
) -> list[Agreement]:
    """Replay the curves in `orders` arrival orders and compare each with the full grid."""
    settings = {c.cell_key: c.block.asha for c in cells if c.block.asha is not None}
    seeds = {c.cell_key: len(c.seeds) for c in cells}
    missing = sorted({c.cell_key for c in curves} - set(settings))
    if missing:
        raise CytotuneError(f"curves of cell {missing[0]}: not a cell of the bench study; expected its cells")
    return [compare(curves, replay(curves, settings, seeds, k, workers), seeds) for k in range(orders)]
