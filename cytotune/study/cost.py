"""What a study costs in backbone FLOPs and GPU-hours, from its plan and its datasets' sizes (no training).

A trial's work is counted in images through the backbone. LoRA training images (steps x batch) cost a forward
and a backward pass through frozen weights: the backward needs the activations' gradients but no weight
gradients, about one more forward (`TRAIN_PASSES`; LoRA's own products are about 1% of a block's FLOPs or
less at the shipped ranks). Evaluation images (validation at every evaluation, test once) cost one forward.
Methods on cached probe features (linear probe, knn, simpleshot) cost one forward per image of the dataset
for each (backbone, dataset), shared by all their trials; training a head on features is negligible. A
forward's FLOPs are counted on the backbone's architecture built on the meta device (no weights, no memory).

Pure functions but for `forward_flops` (builds the architecture) and `dataset_size` (lists a root).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from cytotune.config import FEATURE_METHODS, TrialConfig
from cytotune.data.sampling import FEWSHOT_VALIDATION_PER_CLASS
from cytotune.data.splits import SPLITS, split_counts
from cytotune.errors import CytotuneError
from cytotune.yaml_backbone import YamlBackbone

TRAIN_PASSES = 2.0  # forward + backward through frozen weights, in forwards


@dataclass(frozen=True)
class DataSize:
    """Images per class and split (train, val, test) of one dataset, in the classes' order."""

    per_class: tuple[tuple[int, int, int], ...]

    @property
    def classes(self) -> int:
        return len(self.per_class)

    def split(self, name: str) -> int:
        """Images of one split (train, val or test)."""
        column = SPLITS.index(name)
        return sum(counts[column] for counts in self.per_class)

    @property
    def images(self) -> int:
        return sum(sum(counts) for counts in self.per_class)

    @classmethod
    def even(cls, images: int, classes: int, split: tuple[float, float, float]) -> DataSize:
        """A dataset known only by its size: images spread evenly over the classes, each class split by
        `split` (an estimate for a dataset not at hand)."""
        if images < classes or classes < 1:
            raise CytotuneError(f"{images} images in {classes} classes: expected at least one per class")
        base, extra = divmod(images, classes)
        return cls(tuple(tuple(split_counts(base + (i < extra), split)) for i in range(classes)))


@dataclass(frozen=True)
class TrialWork:
    """Images a trial sends through the backbone: trained on (forward + backward) and evaluated (forward)."""

    train_images: int
    eval_images: int

    def forwards(self) -> float:
        """The trial's work in backbone forwards of one image."""
        return TRAIN_PASSES * self.train_images + self.eval_images


def trial_work(cfg: TrialConfig, size: DataSize) -> TrialWork:
    """The backbone work of one trial on a dataset of this size (feature methods: none of their own)."""
    if cfg.method in FEATURE_METHODS:
        return TrialWork(0, 0)
    from cytotune.train.lora_finetune import lora_steps

    train = cfg.train
    if cfg.shots is not None:
        n_train = cfg.shots * size.classes
    elif cfg.fraction is not None:
        n_train = sum(max(1, math.floor(cfg.fraction * t + 0.5)) for t, _, _ in size.per_class if t)
    else:
        n_train = size.split("train")
    steps = lora_steps(cfg, n_train)
    if train.validation == "fewshot" and cfg.shots is not None:
        per_class = min(cfg.shots, FEWSHOT_VALIDATION_PER_CLASS)
        n_val = sum(min(per_class, v) for _, v, _ in size.per_class)
    else:
        n_val = size.split("val")
    evaluations = math.ceil(steps / train.eval_every)
    return TrialWork(steps * min(train.batch_size, n_train), evaluations * n_val + size.split("test"))


@dataclass(frozen=True)
class CostLine:
    """One part of a study's cost: a block's trials on one backbone, or the probe features it extracts."""

    part: str
    backbone: str
    trials: int
    forwards: float  # backbone forwards of one image
    flops: float

    def gpu_hours(self, tflops: float) -> float:
        """GPU-hours at a sustained `tflops` (10^12 FLOP/s)."""
        return self.flops / (tflops * 1e12) / 3600


def study_cost(
    trials: Iterable[tuple[str, TrialConfig]],
    sizes: Mapping[tuple[str, int], DataSize],
    forward: Mapping[str, float],
) -> list[CostLine]:
    """The cost of a study's trials, given as (part, config) pairs (part: how lines are grouped, such as the
    method block), per part and backbone, plus one `features` line per backbone for the probe features of
    every (backbone, dataset, level, split) the feature methods use. `sizes` by (dataset name, level),
    `forward`: FLOPs of one image's forward by backbone."""
    lines: dict[tuple[str, str], list[float]] = {}
    extracted: dict[tuple, int] = {}
    for part, cfg in trials:
        size = _size(sizes, cfg.dataset, cfg.level)
        entry = lines.setdefault((part, cfg.backbone), [0, 0.0])
        entry[0] += 1
        entry[1] += trial_work(cfg, size).forwards()
        if cfg.method in FEATURE_METHODS:
            key = (cfg.backbone, cfg.weights, cfg.dataset, cfg.root, cfg.level, cfg.split, cfg.split_seed)
            extracted[key] = size.images
    for (backbone, *_), images in extracted.items():
        entry = lines.setdefault(("features", backbone), [0, 0.0])
        entry[1] += images
    return [
        CostLine(part, backbone, int(n), work, work * forward[backbone])
        for (part, backbone), (n, work) in lines.items()
    ]


def _size(sizes: Mapping[tuple[str, int], DataSize], dataset: str, level: int) -> DataSize:
    try:
        return sizes[dataset, level]
    except KeyError:
        raise CytotuneError(
            f"dataset {dataset}: its size is unknown; expected its root on this machine or "
            f"--size {dataset}=IMAGES:CLASSES"
        ) from None


@cache
def forward_flops(backbone: str | YamlBackbone) -> float:
    """FLOPs of one image's forward through the backbone's vision encoder at its input size, counted on its
    architecture built on the meta device (a registry name, or a study YAML's definition)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cytotune.models.registry import build_architecture, get_backbone_spec

    spec = get_backbone_spec(backbone)
    model = build_architecture(backbone, device="meta").eval()
    image = torch.empty(1, 3, spec.input_size, spec.input_size, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(image)
    return float(counter.get_total_flops())


def dataset_size(
    name: str, root: Path, *, level: int, split: tuple[float, float, float], layout: str | None = None
) -> DataSize:
    """The size of the dataset at `root` as its loader lists it (no image is read): its official split, or
    each class split by `split` as a prepared manifest would be (up to images sharing content)."""
    from cytotune.data.manifest import scan_dataset

    listing = scan_dataset(layout or name, root, level=level)
    frame = listing.frame
    per_class = []
    for class_name in listing.classes:
        rows = frame[frame["class_name"] == class_name]
        if "split" in frame.columns and frame["split"].notna().all():
            counts = rows["split"].value_counts()
            per_class.append(tuple(int(counts.get(s, 0)) for s in SPLITS))
        else:
            per_class.append(tuple(split_counts(len(rows), split)))
    return DataSize(tuple(per_class))


def parse_size(text: str) -> tuple[str, tuple[int, int]]:
    """'NAME=IMAGES:CLASSES' (a dataset known by its size) -> (name, (images, classes))."""
    name, _, numbers = text.partition("=")
    images, _, classes = numbers.partition(":")
    if not (name and images.isdigit() and classes.isdigit()):
        raise CytotuneError(f"--size {text!r}: expected NAME=IMAGES:CLASSES such as mlcc=963:4")
    return name, (int(images), int(classes))


def planned_trials(cells: Iterable) -> Iterable[tuple[str, TrialConfig]]:
    """(method block label, trial config) of every trial of the study's cells. An Optuna cell's trials are
    costed at each searched field's lower bound or first choice (a searched lr changes nothing here)."""
    for cell in cells:
        if cell.uses_optuna:
            values = [{path: _first(dim) for path, dim in cell.optuna.items()}] * cell.n_suggestions
        else:
            values = cell.grid_values()
        for searched in values:
            for seed in cell.seeds:
                yield cell.block.label, cell.trial(searched, seed).config


def _first(dimension):
    if dimension.choices is not None:
        return dimension.choices[0]
    return int(dimension.low) if dimension.optuna == "int" else dimension.low


def study_sizes(spec, given: Mapping[str, tuple[int, int]]) -> dict[tuple[str, int], DataSize]:
    """The size of every (dataset, level) of a study: given by name as (images, classes), spread evenly over
    the classes and split by the entry's split (an estimate), else listed from its root."""
    out: dict[tuple[str, int], DataSize] = {}
    entries = [*(spec.datasets or ()), *(e for block in spec.methods for e in (block.datasets or ()))]
    for entry in entries:
        key = (entry.dataset, entry.level)
        if key in out:
            continue
        if entry.dataset in given:
            out[key] = DataSize.even(*given[entry.dataset], entry.split)
        elif Path(entry.root).exists():
            out[key] = dataset_size(
                entry.dataset,
                entry.root,
                level=entry.level,
                split=entry.split,
                layout=entry.registered_layout,
            )
    return out


def cost_table(lines: list[CostLine], tflops: float) -> str:
    """The cost lines as a table with a total: trials, forwards, PFLOP and GPU-hours at `tflops`."""
    header = f"{'part':<14} {'backbone':<16} {'trials':>7} {'forwards':>14} {'PFLOP':>10} {'GPU-h':>9}"
    rows = [header]
    for line in lines:
        rows.append(
            f"{line.part:<14} {line.backbone:<16} {line.trials:>7} {line.forwards:>14,.0f} "
            f"{line.flops / 1e15:>10,.1f} {line.gpu_hours(tflops):>9,.2f}"
        )
    flops = sum(line.flops for line in lines)
    trials = sum(line.trials for line in lines)
    forwards = sum(line.forwards for line in lines)
    rows.append(
        f"{'total':<14} {'':<16} {trials:>7} {forwards:>14,.0f} {flops / 1e15:>10,.1f} "
        f"{flops / (tflops * 1e12) / 3600:>9,.2f}"
    )
    return "\n".join(rows)
