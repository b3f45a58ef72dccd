"""Backbones as nn.Modules: the vision encoder only, mapping normalised images to features."""

from __future__ import annotations

from pathlib import Path

import torch
from open_clip.factory import load_state_dict as open_clip_state_dict
from timm.models import load_state_dict as timm_state_dict
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn

from cytotune.errors import CytotuneError
from cytotune.models.registry import BackboneRef, BackboneSpec, build_architecture, get_backbone_spec
from cytotune.models.weights import resolve_weights

INIT_SEED = 0


class Backbone(nn.Module):
    """A vision encoder: images (B, 3, S, S) normalised with spec.mean/std -> features (B, feature_dim)."""

    def __init__(self, spec: BackboneSpec, encoder: nn.Module, weights_path: Path | None) -> None:
        super().__init__()
        self.spec = spec
        self.encoder = encoder
        self.weights_path = weights_path

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features of a batch of normalised images (not L2-normalised)."""
        return self.encoder(images)


def build_backbone(name: BackboneRef, *, device: torch.device | str | None = None) -> Backbone:
    """Backbone `name` with random weights (seeded, so every build is the same), in eval mode.

    For test-size backbones, parameter counting and architecture checks; `load_backbone` is the way to get
    a real backbone with its pretrained weights. `device="meta"` builds shapes only.
    """
    spec = get_backbone_spec(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        encoder = build_architecture(name, device)
    return Backbone(spec, encoder, None).eval()


def _vision_state_dict(spec: BackboneSpec, encoder: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint at `path` as a state dict of the vision encoder (text tower and classifier dropped)."""
    if spec.library == "open_clip":
        state = open_clip_state_dict(str(path))
        if any(key.startswith("visual.") for key in state):
            state = {
                key.removeprefix("visual."): value
                for key, value in state.items()
                if key.startswith("visual.")
            }
        return state
    state = timm_state_dict(str(path))
    if isinstance(encoder, VisionTransformer):
        state = checkpoint_filter_fn(state, encoder)
    own = encoder.state_dict()
    return {key: value for key, value in state.items() if key in own or not key.startswith("head.")}


def load_weights(spec: BackboneSpec, encoder: nn.Module, path: Path) -> None:
    """Load the checkpoint at `path` into `encoder`, every tensor accounted for; CytotuneError if not."""
    try:
        state = _vision_state_dict(spec, encoder, path)
        result = encoder.load_state_dict(state, strict=False)
    except Exception as err:  # any reader or shape failure: the file is not this backbone's checkpoint
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CytotuneError(f"{spec.name}: cannot load weights file {path}: {first}") from err
    if result.missing_keys or result.unexpected_keys:
        raise CytotuneError(
            f"{spec.name}: weights file {path} does not fit {spec.identifier}: "
            f"{len(result.missing_keys)} missing keys {result.missing_keys[:3]}, "
            f"{len(result.unexpected_keys)} unexpected keys {result.unexpected_keys[:3]}"
        )


def load_backbone(name: BackboneRef, weights: Path | str | None = None) -> Backbone:
    """Backbone `name` with its pretrained weights, in eval mode, on the CPU.

    Weights come from `weights` (a checkpoint file, or a folder with the hub file) or the Hugging Face hub
    cache; a real backbone with neither raises CytotuneError saying what to fetch. Test-size backbones are
    seeded random models (or load `weights` when given).
    """
    spec = get_backbone_spec(name)
    path = resolve_weights(spec, weights)
    backbone = build_backbone(name)
    if path is not None:
        load_weights(spec, backbone.encoder, path)
        backbone.weights_path = path
    return backbone
