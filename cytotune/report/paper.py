"""The paper's reference numbers (search_spaces/README.md) and display names of backbones and datasets."""

from __future__ import annotations

from cytotune.errors import CytotuneError

BACKBONE_LABELS = {
    "clip_vit_b16": "CLIP",
    "clip_vit_l14": "CLIP ViT-L/14",
    "quilt_b16": "QUILT",
    "quilt_b32": "QUILT",
    "biomedclip": "BiomedCLIP",
    "uni": "UNI",
    "vit_b16": "ViT",
}
DATASET_LABELS = {"bcfc": "BCFC", "mlcc": "MLCC", "sipakmed": "SIPaKMeD", "hicervix": "HiCervix"}

# Table 1 of the paper: linear probe, mean test accuracy (%), by dataset and backbone (ViT-B/16-size CLIP).
_TABLE1 = {
    "bcfc": {"CLIP": 94.74, "QUILT": 100.0, "BiomedCLIP": 96.17, "UNI": 99.04, "ViT": 98.72},
    "mlcc": {"CLIP": 93.95, "QUILT": 97.95, "BiomedCLIP": 95.1, "UNI": 99.2, "ViT": 96.8},
    "sipakmed": {"CLIP": 90.5, "QUILT": 92.0, "BiomedCLIP": 87.62, "UNI": 93.33, "ViT": 89.71},
    "hicervix": {"CLIP": 55.2, "QUILT": 54.64, "BiomedCLIP": 46.39, "UNI": 64.07, "ViT": 57.64},
}
_TABLE1_BACKBONES = ("clip_vit_b16", "quilt_b16", "quilt_b32", "biomedclip", "uni", "vit_b16")

REFERENCE_LABEL = "HierSwin"
REFERENCE_ACCURACY = 78.35
# HierSwin on HiCervix (IEEE TMI 2024), test accuracy (%) per level as quoted here; level 2 is not quoted.
HIERSWIN_LEVELS = {1: 92.08, 3: 78.35}
HIERSWIN_MEAN_OF_LEVELS = 82.93


def backbone_label(name: str) -> str:
    """How a backbone is named in tables and figures."""
    return BACKBONE_LABELS.get(name, name)


def dataset_label(name: str) -> str:
    """How a dataset is named in tables and figures."""
    return DATASET_LABELS.get(name, name)


def paper_linear_probe(backbone: str, dataset: str, level: int | None = 3) -> float | None:
    """The paper's Table 1 accuracy (%) for a linear-probe cell, None where the paper has no matching cell."""
    if backbone not in _TABLE1_BACKBONES or level not in (None, 3):
        return None
    return _TABLE1.get(dataset, {}).get(BACKBONE_LABELS[backbone])


def parse_reference(text: str) -> tuple[str, float] | None:
    """A reference line given as "LABEL=ACCURACY" (percent), or None for "none"."""
    if text.strip().lower() == "none":
        return None
    label, _, value = text.rpartition("=")
    try:
        accuracy = float(value)
    except ValueError as err:
        raise CytotuneError(
            f"--reference {text!r}: expected LABEL=ACCURACY (e.g. HierSwin=78.35) or none"
        ) from err
    if not label.strip():
        raise CytotuneError(
            f"--reference {text!r}: empty label; expected LABEL=ACCURACY (e.g. HierSwin=78.35)"
        )
    return label.strip(), accuracy
