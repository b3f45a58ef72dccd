"""The backbone registry: one spec per backbone and the function that builds its architecture."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import nn

from cytotune.errors import CytotuneError
from cytotune.yaml_backbone import YamlBackbone

Builder = Callable[[], nn.Module]
BackboneRef = str | YamlBackbone  # a registry name, or a backbone defined in a study YAML
RANDOM_SUFFIX = "@random"


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone is and how to feed it (search_spaces/README.md, Backbones).

    feature: "image_embedding" is the CLIP-family image embedding after projection, "pre_logits" the timm
    pre-logits CLS token, "cls" and "avg" a YAML-defined timm model's class token or mean patch token; none
    is L2-normalised. Weights come from the Hugging Face hub cache (`hub_repo`, first of `hub_files` found)
    or from a local file; test-size backbones have none. `definition`: the study YAML's definition of a
    backbone outside the registry (cytotune.models.hub reads the rest from its config file).
    """

    name: str
    library: Literal["open_clip", "timm"]
    identifier: str
    pretrained: str | None
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    feature_dim: int
    feature: Literal["image_embedding", "pre_logits", "cls", "avg"]
    width: int
    layers: int
    hub_repo: str | None = None
    hub_files: tuple[str, ...] = ()
    gated: bool = False
    test_size: bool = False
    description: str = ""
    definition: YamlBackbone | None = None


_SPECS: dict[str, BackboneSpec] = {}
_BUILDERS: dict[str, Builder] = {}


def register_backbone(spec: BackboneSpec) -> Callable[[Builder], Builder]:
    """Decorator: register `spec` with the function building its randomly initialised architecture."""

    def register(builder: Builder) -> Builder:
        if spec.name in _SPECS:
            raise ValueError(f"backbone {spec.name!r} registered twice")
        _SPECS[spec.name] = spec
        _BUILDERS[spec.name] = builder
        return builder

    return register


def list_backbones(include_test: bool = True) -> list[str]:
    """Names of the registered backbones, real ones first, in registration order."""
    specs = sorted(_SPECS.values(), key=lambda spec: spec.test_size)
    return [spec.name for spec in specs if include_test or not spec.test_size]


def get_backbone_spec(name: BackboneRef) -> BackboneSpec:
    """The spec of backbone `name`; CytotuneError naming the known backbones if there is none.

    `NAME@random` is the architecture of NAME with seeded random weights, asked for by name (benchmarks of
    real-size models where no weights are at hand); a real name alone never falls back to random weights.
    A YAML definition's spec is read from the model's own config (cytotune.models.hub).
    """
    if isinstance(name, YamlBackbone):
        from cytotune.models.hub import hub_backbone_spec

        return hub_backbone_spec(name)
    base = name.removesuffix(RANDOM_SUFFIX)
    if base not in _SPECS:
        raise CytotuneError(
            f"unknown backbone {name!r}; expected one of {', '.join(list_backbones())} "
            f"(or NAME{RANDOM_SUFFIX} for an architecture with random weights)"
        )
    spec = _SPECS[base]
    if base == name or spec.test_size:
        return spec
    return replace(
        spec,
        name=name,
        hub_repo=None,
        hub_files=(),
        gated=False,
        test_size=True,
        description=f"{spec.description}, random weights",
    )


def build_architecture(name: BackboneRef, device: torch.device | str | None = None) -> nn.Module:
    """The randomly initialised vision encoder of backbone `name` (no weights), built on `device`."""
    get_backbone_spec(name)
    if isinstance(name, YamlBackbone):
        from cytotune.models.hub import build_hub_architecture

        with torch.device(device or "cpu"):
            return build_hub_architecture(name)
    with torch.device(device or "cpu"):
        return _BUILDERS[name.removesuffix(RANDOM_SUFFIX)]()
