"""Parameter counts: what a module holds and trains, and the LoRA formula they must agree with."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts of `module`, each shared tensor counted once."""
    trainable = total = 0
    for parameter in module.parameters():
        total += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
    return trainable, total


def lora_parameter_count(layers: int, width: int, targets: Sequence[str], rank: int) -> int:
    """LoRA parameters on square width x width projections: layers x targets x rank x (in + out)."""
    return layers * len(targets) * rank * (width + width)
