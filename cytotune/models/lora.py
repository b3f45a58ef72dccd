"""LoRA on split attention (peft), its weights, merging, and the adapter files a trial exports."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from cytotune.config import LoraSettings
from cytotune.errors import CytotuneError
from cytotune.models.attention import split_attention
from cytotune.models.backbone import Backbone, load_backbone
from cytotune.models.files import load_head, load_peft_weights, read_model_config, save_model_files
from cytotune.yaml_backbone import YamlBackbone

LORA_MARK = ".lora_"


def lora_target_modules(backbone: Backbone, settings: LoraSettings) -> list[str]:
    """Full names of the q/k/v/o Linear layers LoRA goes on (splits packed attention first, in place).

    CytotuneError naming the backbone when its attention is of a kind cytotune cannot split, or it has no
    transformer blocks (`blocks.N.attn` or `resblocks.N.attn`) at all."""
    try:
        blocks = split_attention(backbone)
    except TypeError as err:
        raise CytotuneError(f"{backbone.spec.name}: LoRA is not available: {err}") from err
    if not blocks:
        raise CytotuneError(
            f"{backbone.spec.name}: LoRA is not available: no transformer block attention found; expected "
            "modules named blocks.N.attn or resblocks.N.attn"
        )
    chosen = settings.blocks if settings.blocks is not None else tuple(blocks)
    outside = [index for index in chosen if index not in blocks]
    if outside:
        raise CytotuneError(
            f"lora blocks {outside} out of range for {backbone.spec.name}: "
            f"expected indices 0..{len(blocks) - 1}"
        )
    return [f"{blocks[index]}.{target}" for index in sorted(set(chosen)) for target in settings.targets]


def add_lora(backbone: Backbone, settings: LoraSettings) -> Backbone:
    """Split the attention of `backbone` and inject peft LoRA on the chosen targets and blocks, in place.

    A is Kaiming-uniform and B zero (peft's default), so the result equals the model before injection;
    scale alpha/sqrt(r) ("rslora") or alpha/r ("standard"); dropout on the LoRA input. Everything but the
    LoRA weights is frozen; the backbone keeps its train/eval mode.
    """
    if has_lora(backbone):
        raise CytotuneError(
            f"{backbone.spec.name} already carries LoRA: build a fresh backbone to add another"
        )
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=lora_target_modules(backbone, settings),
        use_rslora=settings.scaling == "rslora",
        init_lora_weights=True,
        bias="none",
    )
    inject_adapter_in_model(config, backbone)
    for name, parameter in backbone.named_parameters():
        parameter.requires_grad_(LORA_MARK in name)
    return backbone.train(backbone.training)  # new LoRA dropout layers take the backbone's mode


def has_lora(module: nn.Module) -> bool:
    """Whether `module` holds peft LoRA layers."""
    return any(isinstance(layer, LoraLayer) for layer in module.modules())


def lora_state_dict(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights of `backbone` (detached copies), keyed by their module path."""
    return {
        name: tensor.detach().clone() for name, tensor in backbone.state_dict().items() if LORA_MARK in name
    }


def load_lora_state_dict(backbone: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy LoRA weights from `state` into `backbone`; the keys must match its LoRA layers exactly."""
    own = {name: tensor for name, tensor in backbone.state_dict(keep_vars=True).items() if LORA_MARK in name}
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise CytotuneError(
            f"LoRA weights do not fit the backbone: {len(missing)} missing {missing[:2]}, "
            f"{len(unexpected)} unexpected {unexpected[:2]}"
        )
    with torch.no_grad():
        for name, tensor in own.items():
            if tensor.shape != state[name].shape:
                raise CytotuneError(
                    f"LoRA weight {name} has shape {tuple(state[name].shape)}, expected {tuple(tensor.shape)}"
                )
            tensor.copy_(state[name])


def merge_lora(backbone: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base Linear and drop the LoRA layers, in place (for inference)."""
    for name, module in list(backbone.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = backbone.get_submodule(parent_name) if parent_name else backbone
            setattr(parent, child, module.get_base_layer())
    if hasattr(backbone, "peft_config"):
        del backbone.peft_config
    return backbone


def save_adapter(
    directory: Path | str,
    backbone: Backbone,
    head: nn.Linear,
    settings: LoraSettings,
    classes: list[str] | tuple[str, ...],
    backbone_name: str,
    cache_size: int | None = None,
) -> Path:
    """Write a LoRA trial's model files into `directory` (cytotune.models.files: head, config, and the adapter
    in peft's own format); return it."""
    if backbone_name != backbone.spec.name:
        raise CytotuneError(
            f"save_adapter: backbone_name {backbone_name!r} but the backbone is {backbone.spec.name!r}"
        )
    return save_model_files(
        directory, backbone.spec, backbone.weights_path, head, classes, backbone, settings, cache_size
    )


def load_adapter(
    directory: Path | str, weights: Path | str | None = None
) -> tuple[Backbone, nn.Linear, dict]:
    """A freshly loaded backbone with the saved LoRA injected and loaded, its head, and the model config.

    `weights` is the backbone's weights file where the hub cache does not have it.
    """
    meta = read_model_config(directory)
    if meta["lora"] is None:
        raise CytotuneError(f"{directory}: a {meta['method']} model; expected a LoRA adapter")
    definition = meta.get("backbone_definition")
    name = YamlBackbone(**definition) if definition is not None else meta["backbone"]
    backbone = add_lora(load_backbone(name, weights), LoraSettings(**meta["lora"]))
    load_peft_weights(directory, backbone)
    return backbone, load_head(directory, meta), meta
