"""Backbones defined in a study YAML (cytotune.yaml_backbone): spec and architecture read from the model's own
config file, in the Hugging Face hub cache or a local folder, as timm and open_clip read it. Never downloads.

timm: `config.json` (architecture, model_args, pretrained_cfg), built by
`timm.create_model("local-dir:...")` and preprocessed as `timm.data.resolve_data_config` resolves it.
open_clip: `open_clip_config.json` (model_cfg, preprocess_cfg), its vision tower built as
`open_clip.create_model` builds it, preprocessed as open_clip merges preprocess_cfg over its defaults.
Weights: the first of the library's weight files found beside the config.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import timm
import torch
from huggingface_hub import try_to_load_from_cache
from open_clip.model import _build_vision_tower
from open_clip.transform import PreprocessCfg, merge_preprocess_dict
from timm.data import resolve_data_config
from torch import nn

from cytotune.errors import CytotuneError
from cytotune.models.attention import BLOCK_ATTENTION
from cytotune.models.registry import BackboneSpec
from cytotune.models.weights import hub_cache_dir
from cytotune.models.zoo import OPEN_CLIP_FILES, TIMM_FILES
from cytotune.yaml_backbone import YamlBackbone

CONFIG_FILES = {"timm": "config.json", "open_clip": "open_clip_config.json"}
WEIGHT_FILES = {"timm": TIMM_FILES, "open_clip": OPEN_CLIP_FILES}
TIMM_POOLS = {"cls": "token", "avg": "avg"}
PIPELINE = {"interpolation": "bicubic", "resize_mode": "shortest"}  # what cytotune's image pipeline does


def model_folder(definition: YamlBackbone) -> Path:
    """The folder holding the model's config file: its hub cache snapshot, or the local folder (the folder of
    a local weights file); CytotuneError saying where it looked and what it expected when it is missing."""
    filename = CONFIG_FILES[definition.library]
    repo = definition.hub_repo
    if repo is not None:
        cache = hub_cache_dir()
        found = try_to_load_from_cache(repo, filename, cache_dir=cache)
        if isinstance(found, str):
            return Path(found).parent
        where = cache / f"models--{repo.replace('/', '--')}"
        raise CytotuneError(
            f"{definition.name}: {filename} of {definition.source} is not in the hub cache {cache}: expected "
            f"{where}/snapshots/<commit>/{filename} with refs/main naming the commit (`hf download {repo}` "
            "fetches the repo; cytotune never downloads), or a local folder as the source"
        )
    path = Path(definition.source)
    folder = path.parent if path.is_file() else path
    if not (folder / filename).is_file():
        raise CytotuneError(
            f"{definition.name}: {folder / filename} not found: expected a folder holding the model's "
            f"{filename} and weights ({' or '.join(WEIGHT_FILES[definition.library])}), as in its hub repo"
        )
    return folder


def _read_json(path: Path, definition: YamlBackbone) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CytotuneError(f"{definition.name}: cannot read {path}: {err}") from err
    if not isinstance(data, dict):
        raise CytotuneError(f"{definition.name}: {path}: expected a JSON object")
    return data


def _timm_model(definition: YamlBackbone, folder: Path) -> nn.Module:
    """timm's model of the config in `folder`, without classifier, pooling the definition's feature."""
    try:
        model = timm.create_model(f"local-dir:{folder}", pretrained=False, num_classes=0)
    except Exception as err:  # unknown architecture, bad model_args: the config is not one timm builds
        raise CytotuneError(
            f"{definition.name}: timm cannot build the model of {folder / CONFIG_FILES['timm']}: {err}"
        ) from err
    feature = timm_feature(definition, model)
    if _own_pool(model) != TIMM_POOLS[feature]:
        model.reset_classifier(0, global_pool=TIMM_POOLS[feature])
    return model


def _own_pool(model: nn.Module) -> str | None:
    pool = getattr(model, "global_pool", None)
    return pool if isinstance(pool, str) else getattr(pool, "pool_type", None)


def timm_feature(definition: YamlBackbone, model: nn.Module) -> str:
    """The feature mode of a timm YAML backbone: its `feature`, else the model's own pooling (cls or avg)."""
    own = _own_pool(model)
    feature = definition.feature or {pool: mode for mode, pool in TIMM_POOLS.items()}.get(own)
    if feature is None:
        raise CytotuneError(
            f"{definition.name}: the model pools its features by {own!r}; expected `feature: cls` or "
            "`feature: avg` in its definition"
        )
    if feature == "cls" and getattr(model, "cls_token", None) is None:
        raise CytotuneError(
            f"{definition.name}: feature: cls, but {type(model).__name__} has no class token; "
            "expected `feature: avg`"
        )
    return feature


def _open_clip_config(definition: YamlBackbone, folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model_cfg, preprocess_cfg) of an open_clip_config.json, preprocess_cfg over open_clip's defaults."""
    path = folder / CONFIG_FILES["open_clip"]
    config = _read_json(path, definition)
    model_cfg = config.get("model_cfg")
    if not isinstance(model_cfg, dict) or "vision_cfg" not in model_cfg or "embed_dim" not in model_cfg:
        raise CytotuneError(
            f"{definition.name}: {path}: expected a `model_cfg` with embed_dim and vision_cfg, as open_clip "
            "writes it"
        )
    preprocess = merge_preprocess_dict(asdict(PreprocessCfg()), config.get("preprocess_cfg", {}))
    return model_cfg, preprocess


def _open_clip_tower(definition: YamlBackbone, folder: Path) -> nn.Module:
    """open_clip's vision tower of the config in `folder` (no pretrained timm trunk: the checkpoint has
    it)."""
    model_cfg, _ = _open_clip_config(definition, folder)
    vision_cfg = dict(model_cfg["vision_cfg"])
    if "timm_model_name" in vision_cfg:
        vision_cfg["timm_model_pretrained"] = False
    try:
        return _build_vision_tower(
            model_cfg["embed_dim"], vision_cfg, quick_gelu=model_cfg.get("quick_gelu", False)
        )
    except Exception as err:  # a vision_cfg open_clip does not build
        raise CytotuneError(
            f"{definition.name}: open_clip cannot build the vision tower of "
            f"{folder / CONFIG_FILES['open_clip']}: {err}"
        ) from err


def build_hub_architecture(definition: YamlBackbone) -> nn.Module:
    """The randomly initialised vision encoder of a YAML backbone (on torch's current default device)."""
    folder = model_folder(definition)
    if definition.library == "timm":
        return _timm_model(definition, folder)
    return _open_clip_tower(definition, folder)


def _square(size: Any, definition: YamlBackbone, where: str) -> int:
    sides = (size, size) if isinstance(size, int) else tuple(size)
    if len(sides) != 2 or sides[0] != sides[1]:
        raise CytotuneError(f"{definition.name}: {where} input size {size}: expected a square input")
    return int(sides[0])


def _check_pipeline(definition: YamlBackbone, preprocess: dict[str, Any], where: Path) -> None:
    """The model's preprocessing must be what cytotune's image pipeline does (bicubic, shorter side)."""
    for key, ours in PIPELINE.items():
        if key in preprocess and preprocess[key] != ours:
            raise CytotuneError(
                f"{definition.name}: {where} asks for {key} {preprocess[key]!r}; cytotune's image pipeline "
                f"resizes with {key} {ours!r}: expected a model preprocessed that way"
            )


def _preprocessing(definition: YamlBackbone, model: nn.Module, folder: Path) -> dict[str, Any]:
    """input_size, mean and std from the model's own config (checked against the image pipeline)."""
    path = folder / CONFIG_FILES[definition.library]
    if definition.library == "timm":
        data = resolve_data_config(model=model)
        _check_pipeline(definition, data, path)
        size = _square(tuple(data["input_size"][1:]), definition, str(path))
        return {"input_size": size, "mean": tuple(data["mean"]), "std": tuple(data["std"])}
    _, preprocess = _open_clip_config(definition, folder)
    _check_pipeline(definition, preprocess, path)
    size = _square(model.image_size, definition, str(path))  # open_clip's final size: the tower's
    return {"input_size": size, "mean": tuple(preprocess["mean"]), "std": tuple(preprocess["std"])}


def _attention_layout(model: nn.Module) -> tuple[int, int | None]:
    """(transformer blocks, width of their attention) found as LoRA finds them; width None without blocks."""
    blocks = [module for name, module in model.named_modules() if BLOCK_ATTENTION.search(name)]
    if not blocks:
        return 0, None
    first = blocks[0]
    width = getattr(first, "embed_dim", None) or getattr(getattr(first, "qkv", None), "in_features", None)
    return len(blocks), width


@functools.lru_cache(maxsize=64)
def _cached_spec(definition: YamlBackbone, cache: str) -> BackboneSpec:
    folder = model_folder(definition)
    with torch.device("meta"):
        model = build_hub_architecture(definition)
    preprocessing = _preprocessing(definition, model, folder)
    size = preprocessing["input_size"]
    with torch.no_grad():
        feature_dim = int(model.eval()(torch.empty(1, 3, size, size, device="meta")).shape[-1])
    layers, width = _attention_layout(model)
    feature = timm_feature(definition, model) if definition.library == "timm" else "image_embedding"
    return BackboneSpec(
        name=definition.name,
        library=definition.library,
        identifier=definition.source,
        pretrained=None,
        **preprocessing,
        feature_dim=feature_dim,
        feature=feature,
        width=width or feature_dim,
        layers=layers,
        hub_repo=definition.hub_repo,
        hub_files=WEIGHT_FILES[definition.library],
        description=f"defined in the study YAML: {type(model).__name__} from {definition.source}",
        definition=definition,
    )


def hub_backbone_spec(definition: YamlBackbone) -> BackboneSpec:
    """The spec of a YAML backbone, read from its config file (cached per definition and hub cache)."""
    return _cached_spec(definition, str(hub_cache_dir()))


def check_yaml_backbone(definition: YamlBackbone, *, lora: bool) -> BackboneSpec:
    """The spec of a YAML backbone, after checking what a study needs of it: a name the registry does not
    use, a config cytotune reads, and (with `lora`) attention that LoRA can go on (built on the meta device,
    so no weights are read); CytotuneError naming the backbone otherwise."""
    from cytotune.models.lora import lora_target_modules
    from cytotune.models.registry import list_backbones

    if definition.name in list_backbones():
        raise CytotuneError(
            f"{definition.name}: a registered backbone has this name; expected another name for the "
            f"backbone from {definition.source}"
        )
    spec = hub_backbone_spec(definition)
    if lora:
        from cytotune.config import LoraSettings
        from cytotune.models.backbone import build_backbone

        lora_target_modules(build_backbone(definition, device="meta"), LoraSettings())
    return spec
