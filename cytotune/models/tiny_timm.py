"""A tiny timm VisionTransformer registered in timm's model registry, for test-size backbones.

Registered like timm's own variants so that `timm.create_model` (and open_clip's TimmModel, which calls it)
build it through the very same code path as the real ViTs.
"""

from __future__ import annotations

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

TINY_VIT = "cytotune_tiny_vit"

default_cfgs = generate_default_cfgs(
    {
        TINY_VIT: {
            "num_classes": 1000,
            "input_size": (3, 32, 32),
            "interpolation": "bicubic",
            "crop_pct": 1.0,
            "mean": IMAGENET_DEFAULT_MEAN,
            "std": IMAGENET_DEFAULT_STD,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
        }
    }
)


@register_model
def cytotune_tiny_vit(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT with 32x32 input, 8x8 patches, width 64, 2 blocks of 4 heads: same classes as ViT-B/16, tiny."""
    model_args = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4}
    return build_model_with_cfg(
        VisionTransformer,
        TINY_VIT,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        **{**model_args, **kwargs},
    )
