"""Backbone registry (open_clip, timm), attention splitting + peft LoRA, parameter counting."""

from cytotune.models import zoo as _zoo  # noqa: F401  (registers the backbones)
from cytotune.models.backbone import Backbone, build_backbone, load_backbone
from cytotune.models.registry import BackboneSpec, get_backbone_spec, list_backbones
from cytotune.models.table import backbone_rows, format_backbone_table
from cytotune.models.weights import weights_status

__all__ = [
    "Backbone",
    "BackboneSpec",
    "backbone_rows",
    "build_backbone",
    "format_backbone_table",
    "get_backbone_spec",
    "list_backbones",
    "load_backbone",
    "weights_status",
]
