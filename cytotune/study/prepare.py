"""Checks against the registries and the data, and what many trials share, made once before trials start."""

from __future__ import annotations

import sys
from collections.abc import Callable

from cytotune.config import FEATURE_METHODS, TRAINED_METHODS, default_cache_dir
from cytotune.errors import CytotuneError
from cytotune.study.grid import CellPlan
from cytotune.study.spec import StudySpec


def check_registries(spec: StudySpec) -> None:
    """Every backbone and dataset of the study is registered, and has a text tower where a block uses it
    (zero_shot, head_init: text); else one line naming the field and the known ones."""
    from cytotune.data.registry import list_datasets
    from cytotune.models import get_backbone_spec
    from cytotune.models.text import text_tower_spec

    datasets = set(list_datasets())
    for index, block in enumerate(spec.methods):
        scope = f"methods[{index}]." if block.backbones is not None else ""
        for j, name in enumerate(block.backbones or spec.backbones or ()):
            try:
                get_backbone_spec(name)
                if block.method == "zero_shot" or block.head_init == "text":
                    text_tower_spec(name)
            except CytotuneError as err:
                raise CytotuneError(f"{spec.where()}: {scope}backbones[{j}]: {err}") from err
        scope = f"methods[{index}]." if block.datasets is not None else ""
        for j, entry in enumerate(block.datasets or spec.datasets or ()):
            if entry.registered_layout not in datasets:
                field, what = ("layout", "layout") if entry.layout is not None else ("name", "dataset")
                known = ", ".join(sorted(datasets))
                raise CytotuneError(
                    f"{spec.where()}: {scope}datasets[{j}].{field}: unknown {what} "
                    f"{entry.registered_layout!r}; expected one of: {known} (a dataset of your own: "
                    "`layout: folder` and any `name`)"
                )


def _manifest_key(cell: CellPlan) -> tuple:
    base = cell.base
    return (base["layout"], str(base["root"]), base["level"], tuple(base["split"]), base["split_seed"])


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def prepare_data(
    spec: StudySpec, cells: list[CellPlan], *, features: bool, say: Callable[[str], None] = _to_stderr
) -> None:
    """Prepare each dataset's manifest and image cache once, check shots against the smallest train class,
    check the class prompts of zero_shot and head_init: text against the classes, and (with `features`)
    compute each feature-method backbone's feature cache and each text classifier once."""
    from cytotune.data import open_image_cache, prepare_dataset

    manifests = {}
    images: set[tuple] = set()
    probes: set[tuple] = set()
    texts: set[tuple] = set()
    for cell in cells:
        base = cell.base
        key = _manifest_key(cell)
        cache_dir = default_cache_dir()
        if key not in manifests:
            say(f"preparing {base['dataset']} ({base['layout']} layout) at {base['root']}")
            manifests[key] = prepare_dataset(
                base["layout"],
                base["root"],
                level=base["level"],
                split=tuple(base["split"]),
                split_seed=base["split_seed"],
                cache_dir=cache_dir,
            )
        manifest = manifests[key]
        _check_shots(spec, cell, manifest)
        size = base["train"]["image_cache_size"]
        if (key, size) not in images:
            images.add((key, size))
            open_image_cache(manifest, size=size, cache_dir=cache_dir)
        probe = (
            key,
            size,
            base["backbone"],
            str(base["weights"]),
            base["train"]["device"],
            cell.resources["GPU"],
        )
        if features and base["method"] in FEATURE_METHODS and probe not in probes:
            probes.add(probe)
            _probe_features(cell, manifest, cache_dir, say)
        text = (key, base["backbone"], str(base["weights"]), repr(base["prompts"]))
        if (base["method"] == "zero_shot" or base["head_init"] == "text") and text not in texts:
            texts.add(text)
            _text_classifier(spec, cell, manifest, cache_dir, features, say)


def _check_shots(spec: StudySpec, cell: CellPlan, manifest) -> None:
    shots = cell.base.get("shots")
    if shots is None:
        return
    repeat = cell.base["train"]["short_class"] == "repeat"
    train = manifest.frame[manifest.frame["split"] == "train"]
    counts = train["class_name"].value_counts()
    smallest = min(manifest.classes, key=lambda c: int(counts.get(c, 0)))
    have = int(counts.get(smallest, 0))
    if shots > have and not (repeat and have):
        raise CytotuneError(
            f"{spec.where()}: methods[{cell.block_index}].shots: {shots} shots per class, but class "
            f"{smallest!r} of {cell.base['dataset']} has {have} train images; expected at most {have}"
            + ("" if repeat else " (or train.short_class: repeat to repeat its images)")
        )


def _probe_features(cell: CellPlan, manifest, cache_dir, say: Callable[[str], None]) -> None:
    import torch

    from cytotune.train.features import cached_features
    from cytotune.train.runtime import resolve_device

    setting = cell.base["train"]["device"]
    device = torch.device("cpu") if cell.resources["GPU"] == 0 else resolve_device(setting)
    if setting == "cpu":
        device = torch.device("cpu")
    say(f"probe features of {cell.base['backbone']} on {cell.base['dataset']} ({device.type})")
    cached_features(
        manifest,
        cell.base["backbone"],
        cell.base["weights"],
        cache_dir=cache_dir,
        batch_size=cell.base["train"]["eval_batch_size"],
        device=device,
    )
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _text_classifier(
    spec: StudySpec, cell: CellPlan, manifest, cache_dir, compute: bool, say: Callable[[str], None]
) -> None:
    """Check the cell's prompts against the dataset's classes and, with `compute`, make its text
    classifier (on a remote cluster the workers make it: the weights may be theirs alone)."""
    from cytotune.config import TrialConfig
    from cytotune.data.prompts import class_prompts
    from cytotune.train.text_classifier import text_classifier

    base = cell.base
    try:
        class_prompts(base["layout"], base["dataset"], list(manifest.classes), base["prompts"])
        if compute:
            lr = (base["lr"] or 1.0) if base["method"] in TRAINED_METHODS else None  # searched: any will do
            cfg = TrialConfig(**{**base, "seed": cell.seeds[0], "lr": lr, "cache_dir": cache_dir})
            say(f"text classifier of {base['backbone']} for {base['dataset']}")
            text_classifier(cfg, list(manifest.classes))
    except CytotuneError as err:
        raise CytotuneError(f"{spec.where()}: methods[{cell.block_index}]: {err}") from err
