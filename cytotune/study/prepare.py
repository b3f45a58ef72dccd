"""Checks against the registries and the data, and what many trials share, made once before trials start."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from cytotune.config import FEATURE_METHODS, TrialTemplate
from cytotune.errors import CytotuneError
from cytotune.study.grid import CellPlan
from cytotune.study.spec import StudySpec
from cytotune.yaml_backbone import backbone_name


def check_registries(spec: StudySpec) -> None:
    """Every backbone and dataset of the study is registered or defined (a YAML backbone: its config read, its
    attention checked for LoRA); else one line naming the field, and the known ones."""
    from cytotune.data.registry import list_datasets
    from cytotune.models import get_backbone_spec
    from cytotune.models.hub import check_yaml_backbone
    from cytotune.models.text import TEXT_METHODS, text_tower_spec

    datasets = set(list_datasets())
    for index, block in enumerate(spec.methods):
        scope = f"methods[{index}]." if block.backbones is not None else ""
        for j, entry in enumerate(block.backbones or spec.backbones or ()):
            definition = spec.backbone_definition(backbone_name(entry))
            text = block.method == "zero_shot" or block.head_init == "text"
            try:
                if text and definition is not None:
                    raise CytotuneError(
                        f"backbone {definition.name!r} is defined in the YAML, and {TEXT_METHODS} read "
                        "text towers of registry backbones only; expected a registry backbone with one "
                        "(see `cytotune backbones`, column text)"
                    )
                if definition is None:
                    get_backbone_spec(entry)
                else:
                    check_yaml_backbone(definition, lora=block.method == "lora")
                if text:
                    text_tower_spec(backbone_name(entry))
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


def _manifest_key(t: TrialTemplate) -> tuple:
    return (t.dataset_layout, str(t.root), t.level, tuple(t.split), t.split_seed, str(t.cache_dir))


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def prepare_data(
    spec: StudySpec, cells: list[CellPlan], *, features: bool, say: Callable[[str], None] = _to_stderr
) -> None:
    """Prepare each dataset's manifest and image cache once, check shots against the smallest train class,
    check the class prompts of zero_shot and head_init: text against the classes, and (with `features`)
    compute each feature-method backbone's feature cache and each text classifier once: the cells' templates
    give the same manifest, feature request and text classifier their trials will ask for."""
    from cytotune.data import open_image_cache
    from cytotune.train.trial_data import trial_manifest

    manifests = {}
    images: set[tuple] = set()
    probes: set[Path] = set()
    texts: set[tuple] = set()
    for cell in cells:
        template = cell.template.with_local_cache()  # as the trainable sees its trials' configs
        key = _manifest_key(template)
        if key not in manifests:
            say(f"preparing {template.dataset} ({template.dataset_layout} layout) at {template.root}")
            manifests[key] = trial_manifest(template)
        manifest = manifests[key]
        _check_shots(spec, cell, manifest)
        size = template.train.image_cache_size
        if (key, size) not in images:
            images.add((key, size))
            open_image_cache(manifest, size=size, cache_dir=template.cache_dir)
        if features and template.method in FEATURE_METHODS:
            _probe_features(cell, template, manifest, probes, say)
        if template.uses_text:
            _text_classifier(spec, cell, template, manifest, texts, features, say)


def _check_shots(spec: StudySpec, cell: CellPlan, manifest) -> None:
    shots = cell.template.shots
    if shots is None:
        return
    repeat = cell.template.train.short_class == "repeat"
    train = manifest.frame[manifest.frame["split"] == "train"]
    counts = train["class_name"].value_counts()
    smallest = min(manifest.classes, key=lambda c: int(counts.get(c, 0)))
    have = int(counts.get(smallest, 0))
    if shots > have and not (repeat and have):
        raise CytotuneError(
            f"{spec.where()}: methods[{cell.block_index}].shots: {shots} shots per class, but class "
            f"{smallest!r} of {cell.template.dataset} has {have} train images; expected at most {have}"
            + ("" if repeat else " (or train.short_class: repeat to repeat its images)")
        )


def _trial_device(cell: CellPlan):
    """The torch device a trial of the cell gets on a local Ray: CPU when it asks no GPU (Ray hides the GPUs
    from such a trial) or its train.device says cpu, else what the trainers resolve."""
    import torch

    from cytotune.train.runtime import resolve_device

    setting = cell.template.train.device
    if cell.resources["GPU"] == 0 or setting == "cpu":
        return torch.device("cpu")
    return resolve_device(setting)


def _probe_features(
    cell: CellPlan, template: TrialTemplate, manifest, done: set[Path], say: Callable[[str], None]
) -> None:
    """Compute the cell's probe features unless an earlier cell asked for the same ones."""
    import torch

    from cytotune.train.features import feature_request

    device = _trial_device(cell)
    request = feature_request(template, manifest, device)
    path = request.path()
    if path in done:
        return
    done.add(path)
    say(f"probe features of {template.backbone} on {template.dataset} ({device.type})")
    request.cached()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _text_classifier(
    spec: StudySpec,
    cell: CellPlan,
    template: TrialTemplate,
    manifest,
    done: set[tuple],
    compute: bool,
    say: Callable[[str], None],
) -> None:
    """Check the cell's prompts against the dataset's classes and, with `compute`, make its text classifier
    unless an earlier cell made the same (on a remote cluster the workers make it: the weights may be theirs
    alone)."""
    from cytotune.data.prompts import class_prompts
    from cytotune.train.text_classifier import text_classifier

    key = (template.backbone, template.weights, template.dataset, manifest.digest, template.prompts)
    if key in done:
        return
    done.add(key)
    classes = list(manifest.classes)
    try:
        class_prompts(template.dataset_layout, template.dataset, classes, template.prompts)
        if compute:
            say(f"text classifier of {template.backbone} for {template.dataset}")
            text_classifier(template, classes)
    except CytotuneError as err:
        raise CytotuneError(f"{spec.where()}: methods[{cell.block_index}]: {err}") from err
