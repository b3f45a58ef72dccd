"""Grouped LoRA: K LoRA adapters on one frozen backbone, one per configuration of a packed trial.

The batch of a grouped forward is K equal blocks of rows, block k carrying configuration k's images; each
target Linear adds configuration k's low-rank update, dropout(x_k) A_k^T B_k^T * scale, to block k only
(batched matmuls over the stacked adapter weights). The frozen weights see one batch of K x B images, so
one backbone pass trains every configuration. Each configuration draws its LoRA dropout masks from its own
generator, so that its masks are those of a trial trained alone from the same generator state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from cytotune.config import LoraSettings
from cytotune.models.backbone import Backbone
from cytotune.models.lora import lora_target_modules

ADAPTER = "default"  # the adapter name peft gives an injected adapter


class GroupedLoraLinear(nn.Module):
    """A frozen Linear plus K stacked LoRA adapters: A (K, r, in), B (K, out, r)."""

    def __init__(
        self,
        base: nn.Linear,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scaling: float,
        dropout: float,
        generators: list[torch.Generator],
    ) -> None:
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.Parameter(lora_a.detach().clone().to(base.weight.device))
        self.lora_B = nn.Parameter(lora_b.detach().clone().to(base.weight.device))
        self.scaling = scaling
        self.dropout = dropout
        self.generators = generators  # shared with every grouped layer of the backbone, one per adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """base(x) + each block's own low-rank update; x is (K * B, ..., in), block k for adapter k."""
        result = self.base_layer(x)
        groups = self.lora_A.shape[0]
        if x.shape[0] % groups:
            raise ValueError(f"a grouped LoRA batch of {x.shape[0]} rows does not split into {groups} blocks")
        blocks = x.reshape(groups, -1, x.shape[-1])
        if self.training and self.dropout > 0.0:
            keep = 1.0 - self.dropout
            noise = torch.empty((groups, x.shape[0] // groups, *x.shape[1:]), dtype=x.dtype, device=x.device)
            for mask, generator in zip(noise, self.generators, strict=True):
                mask.bernoulli_(keep, generator=generator)
            blocks = blocks * noise.div_(keep).reshape(blocks.shape)
        low = torch.bmm(blocks, self.lora_A.transpose(1, 2))
        update = torch.bmm(low, self.lora_B.transpose(1, 2)) * self.scaling
        return result + update.reshape(result.shape)

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the adapters at positions `keep` (a 1-D index tensor), in that order."""
        self.lora_A = nn.Parameter(self.lora_A.detach()[keep])
        self.lora_B = nn.Parameter(self.lora_B.detach()[keep])


def grouped_layers(backbone: nn.Module) -> dict[str, GroupedLoraLinear]:
    """The grouped LoRA layers of `backbone`, by module path."""
    return {name: m for name, m in backbone.named_modules() if isinstance(m, GroupedLoraLinear)}


def lora_scaling(settings: LoraSettings) -> float:
    """The factor on B A x, as peft computes it: alpha / sqrt(rank) (rslora) or alpha / rank."""
    if settings.scaling == "rslora":
        return settings.alpha / math.sqrt(settings.rank)
    return settings.alpha / settings.rank


def add_grouped_lora(
    backbone: Backbone,
    settings: LoraSettings,
    adapters: Sequence[dict[str, torch.Tensor]],
    generators: list[torch.Generator],
) -> Backbone:
    """Put K grouped LoRA adapters on `backbone` in place: adapter k holds `adapters[k]`, LoRA weights keyed
    as lora_state_dict gives them for a backbone from add_lora(..., settings). Splits attention first;
    everything but the adapters is frozen. `generators` (K, kept by reference) draw each adapter's dropout
    masks."""
    targets = lora_target_modules(backbone, settings)
    for parameter in backbone.parameters():
        parameter.requires_grad_(False)
    for name in targets:
        stacked = {
            part: torch.stack([adapter[f"{name}.{part}.{ADAPTER}.weight"] for adapter in adapters])
            for part in ("lora_A", "lora_B")
        }
        grouped = GroupedLoraLinear(
            backbone.get_submodule(name),
            stacked["lora_A"],
            stacked["lora_B"],
            scaling=lora_scaling(settings),
            dropout=settings.dropout,
            generators=generators,
        )
        grouped.train(backbone.training)
        parent_name, _, child = name.rpartition(".")
        setattr(backbone.get_submodule(parent_name), child, grouped)
    return backbone


def adapter_state_dict(backbone: nn.Module, index: int) -> dict[str, torch.Tensor]:
    """Adapter `index` of a grouped backbone as peft LoRA weights (the keys lora_state_dict gives for a
    backbone from add_lora), detached copies."""
    state = {}
    for name, layer in grouped_layers(backbone).items():
        state[f"{name}.lora_A.{ADAPTER}.weight"] = layer.lora_A[index].detach().clone()
        state[f"{name}.lora_B.{ADAPTER}.weight"] = layer.lora_B[index].detach().clone()
    return state


def load_adapter_state_dict(backbone: nn.Module, index: int, state: dict[str, torch.Tensor]) -> None:
    """Copy adapter_state_dict()-keyed LoRA weights into adapter `index` of a grouped backbone."""
    with torch.no_grad():
        for name, layer in grouped_layers(backbone).items():
            layer.lora_A[index].copy_(state[f"{name}.lora_A.{ADAPTER}.weight"])
            layer.lora_B[index].copy_(state[f"{name}.lora_B.{ADAPTER}.weight"])
