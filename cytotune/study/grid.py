"""A study expanded into cells (all but the searched fields and the seed) and trials (cell + searched + seed).

Pure functions: no Ray, no files.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from cytotune.config import LoraSettings, TrainSettings, TrialConfig, TrialTemplate
from cytotune.errors import CytotuneError
from cytotune.study.spec import DatasetEntry, MethodBlock, OptunaDimension, StudySpec
from cytotune.yaml_backbone import backbone_name


@dataclass(frozen=True)
class TrialPlan:
    """One trial: its cell, stable key, the TrialConfig the trainer gets, searched values, resources."""

    cell_key: str
    trial_key: str
    config: TrialConfig
    searched: dict[str, Any]
    resources: dict[str, float]

    def ray_config(self) -> dict[str, Any]:
        """The trial as Ray Tune's config: keys, searched values, resources and the TrialConfig itself (Tune
        pickles what is not JSON in its experiment state, so the trainable gets the same object back)."""
        return {
            "trial_key": self.trial_key,
            "cell_key": self.cell_key,
            "searched": dict(self.searched),
            "resources": dict(self.resources),
            "trial": self.config,
        }


@dataclass(frozen=True)
class CellPlan:
    """One cell: the fixed part of its trials (a template), its searched dimensions, seeds and resources."""

    cell_key: str
    block_index: int
    block: MethodBlock
    template: TrialTemplate
    seeds: tuple[int, ...]
    resources: dict[str, float]
    grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    optuna: dict[str, OptunaDimension] = field(default_factory=dict)

    @property
    def uses_optuna(self) -> bool:
        """Whether this cell's searched values are drawn by Optuna while the study runs."""
        return bool(self.optuna)

    @property
    def n_suggestions(self) -> int:
        """Distinct searched-value combinations this cell tries (each runs once per seed)."""
        if self.uses_optuna:
            return self.block.samples or 0
        return _product(len(v) for v in self.grid.values())

    @property
    def n_trials(self) -> int:
        """Trials in this cell: suggestions x seeds."""
        return self.n_suggestions * len(self.seeds)

    def grid_values(self) -> list[dict[str, Any]]:
        """Every combination of the grid-searched values (one empty dict when nothing is searched by grid)."""
        names = sorted(self.grid)
        return [
            dict(zip(names, combo, strict=True))
            for combo in itertools.product(*(self.grid[n] for n in names))
        ]

    def trial(self, searched: dict[str, Any], seed: int, sample: int | None = None) -> TrialPlan:
        """The trial of this cell with these searched values and seed (and Optuna sample number)."""
        try:
            config = _with_searched(self.template, searched, seed)
        except ValueError as err:
            reason = " ".join(str(err).split())
            raise CytotuneError(
                f"{self.cell_key}: searched values {searched} make no valid trial: {reason}"
            ) from err
        key = trial_key(self.cell_key, searched, seed, sample)
        return TrialPlan(self.cell_key, key, config, dict(searched), self.resources)


def _with_searched(template: TrialTemplate, searched: dict[str, Any], seed: int) -> TrialConfig:
    """The template with these searched values (dotted names: lr, k, lora.*, train.*) and seed, checked:
    a section with searched values is built again from its fields, the others are taken as they are."""
    fields: dict[str, Any] = {**dict(template), "seed": seed}
    sections: dict[str, dict[str, Any]] = {}
    for path, value in searched.items():
        section, _, name = path.rpartition(".")
        if section:
            sections.setdefault(section, {})[name] = value
        else:
            fields[name] = value
    for section, values in sections.items():
        part = getattr(template, section)
        fields[section] = type(part)(**{**dict(part), **values})
    return TrialConfig(**fields)


def _product(sizes) -> int:
    out = 1
    for n in sizes:
        out *= n
    return out


def format_value(value: Any) -> str:
    """A searched or grid value as it appears in keys: short, stable, exact for floats."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return (
            "".join(map(str, value))
            if all(isinstance(v, str) and len(v) == 1 for v in value)
            else "-".join(map(format_value, value))
        )
    return str(value)


def cell_key(
    block: MethodBlock, backbone: str, dataset: DatasetEntry, budget: str, lora: dict[str, Any]
) -> str:
    """The stable key of a cell: block, backbone, dataset, data budget and (LoRA) the fixed LoRA settings."""
    parts = [block.label, backbone, dataset.label, budget]
    if block.method == "lora":
        defaults = LoraSettings()
        shown = [
            f"{name}={format_value(value)}"
            for name, value in lora.items()
            if name in ("rank", "targets") or value != getattr(defaults, name)
        ]
        parts.append(",".join(shown))
    return "/".join(parts)


def trial_key(cell: str, searched: dict[str, Any], seed: int, sample: int | None = None) -> str:
    """The stable key of a trial: its cell key, the Optuna sample number (Optuna cells only: a sampler may
    draw the same values twice), its searched values (sorted by field) and its seed."""
    drawn = [] if sample is None else [f"sample={sample}"]
    searched_parts = (f"{name}={format_value(searched[name])}" for name in sorted(searched))
    return "/".join([cell, *drawn, *searched_parts, f"seed={seed}"])


def configuration_key(trial_key_: str) -> str:
    """The key of a trial's configuration (its trial key without the seed): shared by all its seeds."""
    return trial_key_.rpartition("/seed=")[0]


def _budgets(block: MethodBlock) -> list[tuple[str, dict[str, Any]]]:
    if block.shots is not None:
        return [(f"shots={k}", {"shots": k}) for k in block.shots]
    if block.fractions is not None:
        return [(f"fraction={format_value(float(f))}", {"fraction": float(f)}) for f in block.fractions]
    return [("full", {})]


def _lora_cells(block: MethodBlock) -> list[dict[str, Any]]:
    if block.method != "lora":
        return [{}]
    axes = {name: values for name, values in block.lora.axes().items() if f"lora.{name}" not in block.search}
    names = list(axes)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes.values())]


def resources_of(block: MethodBlock) -> dict[str, float]:
    """Ray resources one trial of this block asks for (CPU, GPU)."""
    return {"CPU": float(block.resources.cpus), "GPU": float(block.resources.gpus)}


def expand_cells(spec: StudySpec) -> list[CellPlan]:
    """Every cell of the study, in a fixed order: blocks, backbones, datasets, budgets, LoRA grid values."""
    cells: list[CellPlan] = []
    seen: dict[str, int] = {}
    for index, block in enumerate(spec.methods):
        train: TrainSettings = spec.block_train(block)
        grid = {p: tuple(v) for p, v in block.search.items() if not isinstance(v, OptunaDimension)}
        optuna = {p: v for p, v in block.search.items() if isinstance(v, OptunaDimension)}
        if optuna:
            optuna.update({p: OptunaDimension(optuna="categorical", choices=v) for p, v in grid.items()})
            grid = {}
        for entry in block.backbones or spec.backbones or ():
            backbone = backbone_name(entry)
            for dataset in block.datasets or spec.datasets or ():
                for budget, budget_fields in _budgets(block):
                    for lora in _lora_cells(block):
                        key = cell_key(block, backbone, dataset, budget, lora)
                        if key in seen:
                            raise CytotuneError(
                                f"{spec.where()}: methods[{index}]: cell {key} also comes from "
                                f"methods[{seen[key]}]; expected distinct `name`s for the two blocks"
                            )
                        seen[key] = index
                        template = TrialTemplate(
                            method=block.method,
                            backbone=backbone,
                            backbone_definition=spec.backbone_definition(backbone),
                            weights=spec.weights.get(backbone),
                            dataset=dataset.dataset,
                            layout=dataset.registered_layout,
                            root=dataset.root,
                            level=dataset.level,
                            split=dataset.split,
                            split_seed=dataset.split_seed,
                            lr=block.lr,
                            k=block.k,
                            head_init=block.head_init,
                            prompts=dataset.prompts,
                            lora=LoraSettings(**_fixed_lora(block), **lora),
                            train=train,
                            **budget_fields,
                        )
                        cells.append(
                            CellPlan(
                                cell_key=key,
                                block_index=index,
                                block=block,
                                template=template,
                                seeds=tuple(spec.block_seeds(block)),
                                resources=resources_of(block),
                                grid=grid,
                                optuna=optuna,
                            )
                        )
    return cells


def _fixed_lora(block: MethodBlock) -> dict[str, Any]:
    return {} if block.lora.blocks is None else {"blocks": block.lora.blocks}


def expand_trials(spec: StudySpec) -> list[TrialPlan]:
    """Every trial of a grid-searched study, cell by cell (Optuna draws its trials while running)."""
    trials: list[TrialPlan] = []
    for cell in expand_cells(spec):
        if cell.uses_optuna:
            raise CytotuneError(
                f"{spec.where()}: methods[{cell.block_index}].search: drawn by Optuna while the study runs; "
                "expected a grid search to list trials ahead"
            )
        trials.extend(cell.trial(values, seed) for values in cell.grid_values() for seed in cell.seeds)
    return trials


def count_trials(cells: list[CellPlan]) -> int:
    """Total trials of these cells (grid or Optuna)."""
    return sum(cell.n_trials for cell in cells)
