"""The registered backbones (search_spaces/README.md, Backbones): one spec and one architecture builder each.

Weights as the paper's authors used them: vit_b16 is Google's original ViT-B/16 (ImageNet-21k, then 1k), the
weights of `google/vit-base-patch16-224` that the authors' code loaded through HF transformers, in timm as
`vit_base_patch16_224.orig_in21k_ft_in1k` (not timm's default augreg2 recipe). QUILT is ViT-B/16 in the
paper's text and ViT-B/32 in the authors' code: the studies ship quilt_b16 (what the paper states);
quilt_b32 is registered too, to reproduce the code.

Values come from each model's own pretrained config: open_clip's pretrained table for the OpenAI CLIP tags,
timm's pretrained cfg for vit_b16, the `open_clip_config.json` of the QuiltNet and BiomedCLIP hub repos, and
the UNI model card (timm ViT-L/16 with `init_values=1e-5`, ImageNet mean/std).
"""

from __future__ import annotations

from typing import Any

import open_clip
import timm
from open_clip.model import _build_vision_tower
from torch import nn

from cytotune.models.registry import BackboneSpec, register_backbone
from cytotune.models.tiny_timm import TINY_VIT

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HUB_REPO_FILES = ("open_clip_pytorch_model.bin", "open_clip_model.safetensors")
TIMM_FILES = ("model.safetensors", "pytorch_model.bin")


def _open_clip_pretrained(model: str, tag: str) -> dict[str, Any]:
    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        raise LookupError(f"open_clip has no pretrained tag {model}:{tag}")
    return cfg


def _clip_tower(model: str, *, quick_gelu: bool) -> nn.Module:
    """open_clip's vision tower (VisionTransformer, nn.MultiheadAttention blocks) of a built-in config."""
    cfg = open_clip.get_model_config(model)
    return _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=quick_gelu)


def _timm_trunk_tower(embed_dim: int, timm_model: str, image_size: int) -> nn.Module:
    """open_clip's TimmModel tower as configured by BiomedCLIP: timm trunk, CLS token, linear projection."""
    vision_cfg = {
        "timm_model_name": timm_model,
        "timm_model_pretrained": False,
        "timm_pool": "",
        "timm_proj": "linear",
        "image_size": image_size,
    }
    return _build_vision_tower(embed_dim, vision_cfg)


def _openai_clip_spec(name: str, model: str, width: int, layers: int, description: str) -> BackboneSpec:
    pretrained = _open_clip_pretrained(model, "openai")
    return BackboneSpec(
        name=name,
        library="open_clip",
        identifier=model,
        pretrained="openai",
        input_size=open_clip.get_model_config(model)["vision_cfg"]["image_size"],
        mean=tuple(pretrained["mean"]),
        std=tuple(pretrained["std"]),
        feature_dim=open_clip.get_model_config(model)["embed_dim"],
        feature="image_embedding",
        width=width,
        layers=layers,
        hub_repo=pretrained["hf_hub"].rstrip("/"),
        hub_files=OPEN_CLIP_FILES,
        description=description,
    )


_VIT_B16_TIMM = "vit_base_patch16_224.orig_in21k_ft_in1k"  # = google/vit-base-patch16-224
_VIT_B16_CFG = timm.models.get_pretrained_cfg(_VIT_B16_TIMM)


@register_backbone(_openai_clip_spec("clip_vit_b16", "ViT-B-16", 768, 12, "OpenAI CLIP ViT-B/16"))
def clip_vit_b16() -> nn.Module:
    """OpenAI CLIP ViT-B/16 vision tower (QuickGELU, as pretrained)."""
    return _clip_tower("ViT-B-16", quick_gelu=_open_clip_pretrained("ViT-B-16", "openai")["quick_gelu"])


@register_backbone(_openai_clip_spec("clip_vit_l14", "ViT-L-14", 1024, 24, "OpenAI CLIP ViT-L/14"))
def clip_vit_l14() -> nn.Module:
    """OpenAI CLIP ViT-L/14 vision tower (QuickGELU, as pretrained)."""
    return _clip_tower("ViT-L-14", quick_gelu=_open_clip_pretrained("ViT-L-14", "openai")["quick_gelu"])


@register_backbone(
    BackboneSpec(
        name="quilt_b16",
        library="open_clip",
        identifier="hf-hub:wisdomik/QuiltNet-B-16",
        pretrained=None,
        input_size=224,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        feature_dim=512,
        feature="image_embedding",
        width=768,
        layers=12,
        hub_repo="wisdomik/QuiltNet-B-16",
        hub_files=HUB_REPO_FILES,
        description="QuiltNet ViT-B/16 (histopathology CLIP; the paper's text)",
    )
)
def quilt_b16() -> nn.Module:
    """QuiltNet-B-16 vision tower: ViT-B-16 config, GELU (its open_clip_config.json sets no quick_gelu)."""
    return _clip_tower("ViT-B-16", quick_gelu=False)


@register_backbone(
    BackboneSpec(
        name="quilt_b32",
        library="open_clip",
        identifier="hf-hub:wisdomik/QuiltNet-B-32",
        pretrained=None,
        input_size=224,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        feature_dim=512,
        feature="image_embedding",
        width=768,
        layers=12,
        hub_repo="wisdomik/QuiltNet-B-32",
        hub_files=HUB_REPO_FILES,
        description="QuiltNet ViT-B/32 (the authors' code used this one)",
    )
)
def quilt_b32() -> nn.Module:
    """QuiltNet-B-32 vision tower: ViT-B-32 config, GELU (its open_clip_config.json sets no quick_gelu)."""
    return _clip_tower("ViT-B-32", quick_gelu=False)


@register_backbone(
    BackboneSpec(
        name="biomedclip",
        library="open_clip",
        identifier="hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
        pretrained=None,
        input_size=224,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        feature_dim=512,
        feature="image_embedding",
        width=768,
        layers=12,
        hub_repo="microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
        hub_files=HUB_REPO_FILES,
        description="BiomedCLIP: open_clip TimmModel with a timm ViT-B/16 trunk",
    )
)
def biomedclip() -> nn.Module:
    """BiomedCLIP vision tower: timm vit_base_patch16_224 trunk (CLS token) + linear projection to 512."""
    return _timm_trunk_tower(512, "vit_base_patch16_224", 224)


@register_backbone(
    BackboneSpec(
        name="uni",
        library="timm",
        identifier="hf-hub:MahmoodLab/UNI",
        pretrained=None,
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        feature_dim=1024,
        feature="pre_logits",
        width=1024,
        layers=24,
        hub_repo="MahmoodLab/UNI",
        hub_files=("pytorch_model.bin",),
        gated=True,
        description="UNI ViT-L/16 (gated: request access on the hub)",
    )
)
def uni() -> nn.Module:
    """UNI: timm ViT-L/16 with layer scale init 1e-5, no classifier, as in its model card."""
    return timm.create_model(
        "vit_large_patch16_224",
        img_size=224,
        patch_size=16,
        init_values=1e-5,
        num_classes=0,
        dynamic_img_size=True,
    )


@register_backbone(
    BackboneSpec(
        name="vit_b16",
        library="timm",
        identifier=_VIT_B16_TIMM,
        pretrained=_VIT_B16_CFG.tag,
        input_size=_VIT_B16_CFG.input_size[-1],
        mean=tuple(_VIT_B16_CFG.mean),
        std=tuple(_VIT_B16_CFG.std),
        feature_dim=768,
        feature="pre_logits",
        width=768,
        layers=12,
        hub_repo=_VIT_B16_CFG.hf_hub_id,
        hub_files=TIMM_FILES,
        description="Google ViT-B/16, ImageNet-21k then 1k (google/vit-base-patch16-224)",
    )
)
def vit_b16() -> nn.Module:
    """Google's original ViT-B/16 (in21k -> in1k) in timm, without classifier: pre-logits CLS token."""
    return timm.create_model(_VIT_B16_TIMM, pretrained=False, num_classes=0)


@register_backbone(
    BackboneSpec(
        name="tiny_clip",
        library="open_clip",
        identifier="tiny (ViT, 32px, patch 8, width 64, 2 blocks)",
        pretrained=None,
        input_size=32,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        feature_dim=32,
        feature="image_embedding",
        width=64,
        layers=2,
        test_size=True,
        description="test-size open_clip VisionTransformer (nn.MultiheadAttention), random weights",
    )
)
def tiny_clip() -> nn.Module:
    """A tiny open_clip VisionTransformer built from a vision config, like the OpenAI CLIP towers."""
    vision_cfg = {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 16}
    return _build_vision_tower(32, vision_cfg, quick_gelu=True)


@register_backbone(
    BackboneSpec(
        name="tiny_vit",
        library="timm",
        identifier=TINY_VIT,
        pretrained=None,
        input_size=32,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        feature_dim=64,
        feature="pre_logits",
        width=64,
        layers=2,
        test_size=True,
        description="test-size timm VisionTransformer, random weights",
    )
)
def tiny_vit() -> nn.Module:
    """A tiny timm VisionTransformer without classifier, through timm.create_model."""
    return timm.create_model(TINY_VIT, pretrained=False, num_classes=0)


@register_backbone(
    BackboneSpec(
        name="tiny_biomedclip",
        library="open_clip",
        identifier=f"tiny (TimmModel, trunk {TINY_VIT})",
        pretrained=None,
        input_size=32,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        feature_dim=32,
        feature="image_embedding",
        width=64,
        layers=2,
        test_size=True,
        description="test-size open_clip tower with a timm trunk, like BiomedCLIP, random weights",
    )
)
def tiny_biomedclip() -> nn.Module:
    """A tiny BiomedCLIP-style tower: open_clip TimmModel, tiny timm ViT trunk, linear projection."""
    return _timm_trunk_tower(32, TINY_VIT, 32)
