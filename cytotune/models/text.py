"""Text towers of the vision-language backbones: open_clip's TextTransformer and CLIP's BPE tokenizer.

A text tower loads from the very checkpoint its image tower loads from (a local file or the hub cache, never
downloaded; open_clip's SimpleTokenizer ships its vocabulary inside the package). Test-size and `@random`
backbones get a seeded random tower built through the same open_clip class. Backbones without a registered
text tower (timm ViT, UNI) and BiomedCLIP (a Hugging Face BERT text tower, which needs the `transformers`
package cytotune does not install) are refused with one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.factory import load_state_dict as open_clip_state_dict
from open_clip.model import _build_text_tower
from open_clip.tokenizer import SimpleTokenizer
from torch import nn

from cytotune.errors import CytotuneError
from cytotune.models.registry import RANDOM_SUFFIX, get_backbone_spec
from cytotune.models.weights import resolve_weights

TEXT_INIT_SEED = 1
INIT_LOGIT_SCALE = float(np.log(1 / 0.07))  # open_clip's CLIP before training: logit scale 1/0.07
TEXT_METHODS = "zero_shot and head_init: text"


@dataclass(frozen=True)
class TextTowerSpec:
    """How to build a backbone's text tower: open_clip's CLIPTextCfg fields, the joint embedding size and
    the activation (QuickGELU for OpenAI's weights)."""

    embed_dim: int
    text_cfg: dict = field(hash=False)
    quick_gelu: bool


def _builtin(model: str, quick_gelu: bool) -> TextTowerSpec:
    cfg = open_clip.get_model_config(model)
    return TextTowerSpec(cfg["embed_dim"], dict(cfg["text_cfg"]), quick_gelu)


TINY_TEXT_CFG = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}

_TEXT_TOWERS: dict[str, TextTowerSpec] = {
    "clip_vit_b16": _builtin("ViT-B-16", quick_gelu=True),
    "clip_vit_l14": _builtin("ViT-L-14", quick_gelu=True),
    "quilt_b16": _builtin("ViT-B-16", quick_gelu=False),  # QuiltNet's open_clip_config.json: CLIP text
    "quilt_b32": _builtin("ViT-B-32", quick_gelu=False),
    "tiny_clip": TextTowerSpec(32, TINY_TEXT_CFG, quick_gelu=True),
}
_NO_TEXT_REASONS = {
    "biomedclip": "its text tower is a Hugging Face BERT (PubMedBERT), which needs the `transformers` "
    "package that cytotune does not install",
    "tiny_biomedclip": "like BiomedCLIP, it has no open_clip TextTransformer",
}


def has_text_tower(backbone: str) -> bool:
    """Whether `backbone` (NAME@random: NAME) has a text tower for zero_shot and head_init: text."""
    return backbone.removesuffix(RANDOM_SUFFIX) in _TEXT_TOWERS


def text_tower_spec(backbone: str) -> TextTowerSpec:
    """The text tower of `backbone` (NAME@random: that of NAME); CytotuneError saying why there is none."""
    spec = get_backbone_spec(backbone)
    base = backbone.removesuffix(RANDOM_SUFFIX)
    if base in _TEXT_TOWERS:
        return _TEXT_TOWERS[base]
    reason = _NO_TEXT_REASONS.get(base, f"it is a {spec.library} vision model without a text tower")
    towers = ", ".join(_TEXT_TOWERS)
    raise CytotuneError(
        f"backbone {backbone!r} has no text tower for {TEXT_METHODS}: {reason}; expected one of: {towers}"
    )


class TextEncoder(nn.Module):
    """A backbone's text tower with its tokenizer and logit scale (exp of the checkpoint's `logit_scale`)."""

    def __init__(self, tower: nn.Module, tokenizer: SimpleTokenizer, logit_scale: float) -> None:
        super().__init__()
        self.tower = tower
        self.tokenizer = tokenizer
        self.logit_scale = logit_scale

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings (len(texts), embed_dim), float32 on the CPU."""
        device = next(self.tower.parameters()).device
        tokens = self.tokenizer(list(texts)).to(device)
        return nn.functional.normalize(self.tower(tokens).float(), dim=-1).cpu()

    def class_embeddings(self, prompts: Sequence[Sequence[str]]) -> torch.Tensor:
        """One row per class (C, embed_dim): the L2-normalised mean of its prompts' normalised embeddings."""
        means = [self.embed(texts).mean(0) for texts in prompts]
        return nn.functional.normalize(torch.stack(means), dim=-1)


def _text_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A whole open_clip checkpoint's text tower (everything but `visual.*` and the logit scale/bias)."""
    skip = ("logit_scale", "logit_bias")
    return {k: v for k, v in state.items() if not k.startswith("visual.") and k not in skip}


def load_text_encoder(backbone: str, weights: Path | str | None = None) -> TextEncoder:
    """The text tower of `backbone` from the checkpoint its image tower loads (`weights`, else the hub cache),
    in eval mode on the CPU; a seeded random tower (logit scale 1/0.07) for a test-size backbone without
    weights. CytotuneError when the backbone has no text tower or the checkpoint holds none."""
    tower_spec = text_tower_spec(backbone)
    spec = get_backbone_spec(backbone)
    path = resolve_weights(spec, weights)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TEXT_INIT_SEED)
        tower = _build_text_tower(tower_spec.embed_dim, tower_spec.text_cfg, quick_gelu=tower_spec.quick_gelu)
    logit_scale = float(np.exp(INIT_LOGIT_SCALE))
    if path is not None:
        try:
            state = open_clip_state_dict(str(path))
        except Exception as err:  # any reader failure: not a checkpoint
            raise CytotuneError(f"{spec.name}: cannot load weights file {path}: {err}") from err
        try:
            result = tower.load_state_dict(_text_state_dict(state), strict=False)
        except RuntimeError as err:  # shapes of another model
            first = str(err).strip().splitlines()[-1].strip()
            message = f"{spec.name}: weights file {path} does not fit its text tower: {first}"
            raise CytotuneError(message) from err
        if result.missing_keys or result.unexpected_keys or "logit_scale" not in state:
            raise CytotuneError(
                f"{spec.name}: weights file {path} holds no text tower for {TEXT_METHODS}: "
                f"{len(result.missing_keys)} missing keys {result.missing_keys[:3]}, "
                f"{len(result.unexpected_keys)} unexpected keys {result.unexpected_keys[:3]}"
                f"{'' if 'logit_scale' in state else ', no logit_scale'}; "
                "expected a whole open_clip checkpoint"
            )
        logit_scale = float(state["logit_scale"].float().exp())
    tokenizer = SimpleTokenizer(context_length=tower_spec.text_cfg.get("context_length", 77))
    return TextEncoder(tower.eval(), tokenizer, logit_scale)
