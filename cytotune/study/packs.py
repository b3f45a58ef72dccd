"""Packed cells (`pack: true` in a method block): one Ray trial trains every configuration x seed of a cell.

A packed cell is one pack: its trials (grid lr values x seeds) go to a packed trainer together, LoRA through
`run_lora_pack` (one frozen backbone pass per step, early stopping inside the pack), linear probes through
`run_probe_sweep`. The pack asks for what its block's `resources` says; the study's scheduler leaves it alone
(it is the only trial of its cell). Before a study starts, each pack's GPU memory is estimated and a pack
that would not fit its GPU is refused with one line (never split: in-pack early stopping compares every
configuration of the cell on all its seeds). Pure functions, no Ray.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from cytotune.config import TrialConfig
from cytotune.study.grid import CellPlan, TrialPlan
from cytotune.study.resources import Fit
from cytotune.study.rungs import rung_steps
from cytotune.study.spec import AshaSettings
from cytotune.tracking.schema import PACK_FINAL, PACK_KEY

# activations a transformer block keeps per token and channel for its backward pass: about 17 (34 bytes at
# 16 bits: Korthikanti et al. 2022, "Reducing activation recomputation in large transformer models"),
# rounded up
SAVED_VALUES = 20
PASSING_VALUES = 12  # activations alive per token and channel in an inference pass (MLP hidden, q/k/v)
GiB = 1024**3
UNCHECKED = "not checked: no GPU seen here, and no resources.gpu_memory_gb"


def is_packed(cell: CellPlan) -> bool:
    """Whether the cell runs as one pack."""
    return bool(cell.block.pack)


def ray_trial_count(cells: list[CellPlan]) -> int:
    """Ray trials of these cells: one per packed cell, one per configuration and seed elsewhere."""
    return sum(1 if is_packed(cell) else cell.n_trials for cell in cells)


@dataclass(frozen=True)
class PackPlan:
    """One pack: its cell, its trials (every grid value x seed, in the cell's order) and resources."""

    cell_key: str
    trials: tuple[TrialPlan, ...]
    resources: dict[str, float]
    asha: AshaSettings | None

    @property
    def pack_key(self) -> str:
        """The pack's key: its cell key and /pack (its Ray trial and its MLflow pack run carry it)."""
        return f"{self.cell_key}/{PACK_KEY}"

    def ray_config(self) -> dict[str, Any]:
        """The pack as Ray Tune's config: its keys, resources, in-pack early stopping and the Ray config of
        each of its trials (as the trial would have alone)."""
        return {
            "trial_key": self.pack_key,
            "cell_key": self.cell_key,
            "searched": {},
            "resources": dict(self.resources),
            "asha": None if self.asha is None else self.asha.model_dump(),
            PACK_KEY: [trial.ray_config() for trial in self.trials],
        }


def pack_of(cell: CellPlan) -> PackPlan:
    """The pack of a packed cell: every grid value with every seed."""
    trials = tuple(cell.trial(values, seed) for values in cell.grid_values() for seed in cell.seeds)
    return PackPlan(cell.cell_key, trials, dict(cell.resources), cell.block.asha)


def pack_configs(cells: list[CellPlan]) -> dict[str, dict[str, Any]]:
    """The Ray config of each packed cell's pack, by pack key."""
    packs = [pack_of(cell) for cell in cells if is_packed(cell)]
    return {pack.pack_key: pack.ray_config() for pack in packs}


def pack_rungs(asha: AshaSettings, eval_every: int, total_steps: int) -> list[int]:
    """The in-pack rungs of `asha`: each rung moved to the first evaluation at or after it (the report the
    study's scheduler would judge a separate trial by), rungs at or past the last step left out (a trial at
    its last step always completes)."""
    out = set()
    for rung in rung_steps(asha):
        step = math.ceil(rung / eval_every - 1e-9) * eval_every
        if step < total_steps:
            out.add(step)
    return sorted(out)


@dataclass(frozen=True)
class BackboneSize:
    """What a memory estimate needs of a backbone: parameters, tokens per image, width and blocks."""

    params: int
    tokens: int
    width: int
    layers: int


@cache
def backbone_size(name: str) -> BackboneSize:
    """The size of backbone `name`, from its architecture built on the meta device (no memory, no weights):
    its parameter count and its tokens per image (patches of its first convolution, plus one class token)."""
    import torch

    from cytotune.models import get_backbone_spec
    from cytotune.models.registry import build_architecture

    spec = get_backbone_spec(name)
    model = build_architecture(name, device="meta")
    patch = next((m.kernel_size[0] for m in model.modules() if isinstance(m, torch.nn.Conv2d)), 16)
    params = sum(p.numel() for p in model.parameters())
    return BackboneSize(params, (spec.input_size // patch) ** 2 + 1, spec.width, spec.layers)


def pack_memory_bytes(cfg: TrialConfig, configurations: int, size: BackboneSize, on_gpu: bool) -> float:
    """An estimate of the device memory a pack of `configurations` trials like `cfg` needs at its peak.

    Frozen weights in float32 (plus their bfloat16 copies under CUDA autocast); LoRA: each configuration's
    adapters with gradient and two AdamW moments (heads are small next to them), and the activations kept for
    the backward pass, SAVED_VALUES per token and channel of each block for configurations x batch images, in
    bfloat16 on a GPU and float32 elsewhere. Linear probe: one evaluation batch through the backbone,
    PASSING_VALUES per token and channel (heads on cached features are small next to this).
    """
    act_bytes = 2 if on_gpu else 4
    weights = size.params * (4 + (2 if on_gpu else 0))
    if cfg.method == "linear_probe":
        return weights + cfg.train.eval_batch_size * size.tokens * size.width * PASSING_VALUES * act_bytes
    blocks = len(cfg.lora.blocks) if cfg.lora.blocks is not None else size.layers
    adapter = blocks * len(cfg.lora.targets) * 2 * cfg.lora.rank * size.width
    trainable = configurations * adapter * 4 * 4
    images = configurations * cfg.train.batch_size
    activations = images * size.layers * size.tokens * size.width * SAVED_VALUES * act_bytes
    return weights + trainable + activations


def visible_gpu_gb() -> float | None:
    """Memory of the first GPU torch sees here, in GiB (None without one)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / GiB


@dataclass(frozen=True)
class PackCheck:
    """A pack's estimate against the memory its trial gets: estimate and memory in GiB (memory None: not
    known, so not checked), and where the memory figure came from."""

    cell: CellPlan
    configurations: int
    estimate_gb: float
    memory_gb: float | None
    source: str

    @property
    def fits(self) -> bool:
        """True unless the estimate is known to exceed the memory."""
        return self.memory_gb is None or self.estimate_gb <= self.memory_gb


def check_pack(cell: CellPlan, gpu_gb: Callable[[], float | None] = visible_gpu_gb) -> PackCheck:
    """The memory check of a packed cell (resources as fitted to the cluster): on a GPU share, against the
    block's gpu_memory_gb (else `gpu_gb()`, the GPU seen here) times the share (at most one GPU: a pack runs
    on one device); on CPU, not checked."""
    pack = pack_of(cell)
    cfg = pack.trials[0].config
    share = min(cell.resources.get("GPU", 0.0), 1.0)
    on_gpu = share > 0 and cfg.train.device != "cpu"
    estimate = pack_memory_bytes(cfg, len(pack.trials), backbone_size(cfg.backbone), on_gpu) / GiB
    given = cell.block.resources.gpu_memory_gb
    if not on_gpu:
        return PackCheck(cell, len(pack.trials), estimate, None, "CPU")
    if given is not None:
        return PackCheck(cell, len(pack.trials), estimate, given * share, "resources.gpu_memory_gb")
    seen = gpu_gb()
    if seen is not None:
        return PackCheck(cell, len(pack.trials), estimate, seen * share, "this machine's GPU")
    return PackCheck(cell, len(pack.trials), estimate, None, UNCHECKED)


def pack_checks(
    cells: list[CellPlan], gpu_gb: Callable[[], float | None] = visible_gpu_gb
) -> list[PackCheck]:
    """The memory check of every packed cell."""
    return [check_pack(cell, gpu_gb) for cell in cells if is_packed(cell)]


def with_pack_checks(fit: Fit, where: str) -> Fit:
    """A cluster fit with a problem line for each block whose pack would not fit its GPU."""
    problems = pack_problems(pack_checks(fit.cells), where)
    return dataclasses.replace(fit, problems=[*fit.problems, *problems]) if problems else fit


def pack_problems(checks: list[PackCheck], where: str) -> list[str]:
    """One line per block with a pack that would not fit its GPU (its first such cell)."""
    problems, seen = [], set()
    for check in checks:
        cell = check.cell
        if check.fits or cell.block_index in seen:
            continue
        seen.add(cell.block_index)
        cfg = cell.trial(cell.grid_values()[0], cell.seeds[0]).config
        problems.append(
            f"{where}: methods[{cell.block_index}].pack: the pack of {cell.cell_key} ({check.configurations} "
            f"trials x batch {cfg.train.batch_size}) needs about {check.estimate_gb:.1f} GiB of GPU memory, "
            f"more than the {check.memory_gb:.1f} GiB its trial gets ({check.source}); expected fewer lr "
            "values or seeds, a smaller train.batch_size, or pack: false"
        )
    return problems


def pack_note(check: PackCheck | None) -> str:
    """The dry-run table's note on a cell: for a pack, its trials in one Ray trial and its memory estimate."""
    if check is None:
        return ""
    note = f"  pack of {check.configurations}, ~{_size(check.estimate_gb)}"
    if check.memory_gb is None:
        return note + ("" if check.source == "CPU" else " (not checked)")
    return note + f" of {check.memory_gb:.1f} GiB" + ("" if check.fits else ": does not fit")


def _size(gb: float) -> str:
    return f"{gb:.1f} GiB" if gb >= 1 else f"{gb * 1024:.0f} MiB"


def pack_summary(checks: list[PackCheck], cells: list[CellPlan]) -> list[str]:
    """The dry run's line on packs: how many, the Ray trials the study runs, where GPU memory came from."""
    if not checks:
        return []
    sources = sorted({c.source for c in checks if c.source != "CPU"})
    packed = sum(c.configurations for c in checks)
    line = (
        f"packs: {len(checks)} cells of {packed} trials run as one Ray trial each; "
        f"{ray_trial_count(cells)} Ray trials in all"
    )
    return [line + (f"; GPU memory per pack: {', '.join(sources)}" if sources else "")]


def pack_members(
    config: dict[str, Any], status: str, last_result: dict | None, checkpoint: str | None
) -> list[dict[str, Any]]:
    """The trials of a pack's Ray trial as separate trials' outcomes (TrialOutcome fields): a finished pack
    gives each trial its own end (finished, stopped inside the pack or failed), final metrics and checkpoint
    folder; a pack that failed, was stopped or is unfinished gives every trial its status."""
    final = (last_result or {}).get(PACK_FINAL) if status == "finished" else None
    out = []
    for index, member in enumerate(config[PACK_KEY]):
        end = (final or {}).get(str(index), {})
        finished = end.get("status") == "finished"
        out.append(
            {
                "trial_key": member["trial_key"],
                "cell_key": member["cell_key"],
                "status": end.get("status", status),
                "trial": member["trial"],
                "searched": member["searched"],
                "metrics": dict(end),
                "checkpoint": f"{checkpoint}/{index}" if finished and checkpoint else None,
            }
        )
    return out
