"""The files of a trial's model, alike for both methods: cytotune_model.json (backbone, preprocessing,
classes, head shape, LoRA settings) and head.safetensors (the linear head); a LoRA trial adds its adapter in
peft's own format (adapter_config.json + adapter_model.safetensors), which `peft.PeftModel.from_pretrained`
loads onto the backbone with split attention (`cytotune.models.split_attention`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from peft.utils import CONFIG_NAME as PEFT_CONFIG
from peft.utils import SAFETENSORS_WEIGHTS_NAME as PEFT_WEIGHTS
from safetensors.torch import load_file, save_file
from torch import nn

from cytotune import __version__
from cytotune.config import LoraSettings
from cytotune.errors import CytotuneError
from cytotune.models.registry import BackboneSpec

MODEL_CONFIG = "cytotune_model.json"
HEAD_WEIGHTS = "head.safetensors"
MODEL_FORMAT = "cytotune-model"
MODEL_VERSION = 2
PEFT_PREFIX = "base_model.model."  # how peft's PeftModel.save_pretrained names adapter weights


def model_config(
    spec: BackboneSpec,
    weights: Path | None,
    head: nn.Linear,
    classes: list[str] | tuple[str, ...],
    lora: LoraSettings | None,
    cache_size: int | None,
) -> dict[str, Any]:
    """What cytotune_model.json holds: enough to rebuild the model with open_clip or timm and use it."""
    return {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "cytotune_version": __version__,
        "method": "lora" if lora is not None else "linear_probe",
        "backbone": spec.name,
        "backbone_definition": spec.definition.model_dump() if spec.definition is not None else None,
        "library": spec.library,
        "identifier": spec.identifier,
        "pretrained": spec.pretrained,
        "weights": weights.name if weights is not None else None,
        "preprocess": {
            "cache_size": cache_size,
            "input_size": spec.input_size,
            "mean": list(spec.mean),
            "std": list(spec.std),
            "steps": "RGB; shorter side to cache_size (PIL bicubic), center crop; shorter side to input_size "
            "(torch bicubic, antialiased), center crop; x / 255; (x - mean) / std",
        },
        "feature": spec.feature,
        "classes": list(classes),
        "head": {
            "in_features": head.in_features,
            "out_features": head.out_features,
            "bias": head.bias is not None,
        },
        "lora": lora.model_dump(mode="json") if lora is not None else None,
        "peft_files": [PEFT_CONFIG, PEFT_WEIGHTS] if lora is not None else [],
    }


def save_model_files(
    directory: Path | str,
    spec: BackboneSpec,
    weights: Path | None,
    head: nn.Linear,
    classes: list[str] | tuple[str, ...],
    lora_backbone: nn.Module | None = None,
    lora: LoraSettings | None = None,
    cache_size: int | None = None,
) -> Path:
    """Write cytotune_model.json and head.safetensors into `directory`, and for LoRA (`lora_backbone` carrying
    the adapter, `lora` its settings) peft's adapter_config.json and adapter_model.safetensors; return it."""
    if not isinstance(head, nn.Linear) or head.out_features != len(classes):
        raise CytotuneError(f"model files: expected a Linear head with {len(classes)} outputs, got {head}")
    if head.in_features != spec.feature_dim:
        raise CytotuneError(
            f"model files: the head takes {head.in_features} features, {spec.name} gives {spec.feature_dim}"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(_cpu(head.state_dict()), str(directory / HEAD_WEIGHTS))
    if lora_backbone is not None:
        lora_backbone.peft_config["default"].save_pretrained(str(directory))
        adapter = {
            PEFT_PREFIX + name: value for name, value in get_peft_model_state_dict(lora_backbone).items()
        }
        save_file(_cpu(adapter), str(directory / PEFT_WEIGHTS))
    config = model_config(spec, weights, head, classes, lora, cache_size)
    (directory / MODEL_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def read_model_config(directory: Path | str) -> dict[str, Any]:
    """The cytotune_model.json of a model folder; CytotuneError when it is not one."""
    path = Path(directory) / MODEL_CONFIG
    if not path.is_file() or not (Path(directory) / HEAD_WEIGHTS).is_file():
        raise CytotuneError(f"{directory}: not a model folder: expected {MODEL_CONFIG} and {HEAD_WEIGHTS}")
    config = json.loads(path.read_text())
    if config.get("format") != MODEL_FORMAT or config.get("version") != MODEL_VERSION:
        raise CytotuneError(f"{path}: expected format {MODEL_FORMAT} version {MODEL_VERSION}")
    return config


def load_head(directory: Path | str, config: dict[str, Any]) -> nn.Linear:
    """The linear head of a model folder."""
    shape = config["head"]
    head = nn.Linear(shape["in_features"], shape["out_features"], bias=shape["bias"])
    head.load_state_dict(load_file(str(Path(directory) / HEAD_WEIGHTS)))
    return head.eval()


def load_peft_weights(directory: Path | str, backbone: nn.Module) -> None:
    """Load a model folder's peft adapter weights into `backbone`, which carries LoRA of the same settings."""
    state = {
        k.removeprefix(PEFT_PREFIX): v for k, v in load_file(str(Path(directory) / PEFT_WEIGHTS)).items()
    }
    expected = set(get_peft_model_state_dict(backbone))
    if set(state) != expected:
        odd = sorted(set(state) ^ expected)
        raise CytotuneError(
            f"{directory}: adapter weights do not fit the LoRA layers: {len(odd)} differ, {odd[:2]}"
        )
    set_peft_model_state_dict(backbone, state)


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value.detach().cpu().contiguous() for name, value in state.items()}
