"""Class prompts for vision-language backbones: each class of a dataset put into sentences for the text tower.

Defaults per shipped dataset (search_spaces/README.md, Text prompts): SIPaKMeD's five squamous cell types,
MLCC's Bethesda categories, BCFC's benign and malignant effusion cells, and HiCervix's Bethesda abbreviations
where a class is one (its other classes, and every class of a dataset of your own, are worded as their name,
underscores as spaces). A study's `prompts` block on a dataset entry overrides templates and class texts.
"""

from __future__ import annotations

from collections.abc import Sequence

from cytotune.config import PromptSettings
from cytotune.errors import CytotuneError

DEFAULT_TEMPLATES = ("a cytology image of {}.", "a microscopy image of {}.")

BETHESDA = {
    "NILM": "normal cells, negative for intraepithelial lesion or malignancy",
    "ASC-US": "atypical squamous cells of undetermined significance",
    "ASC-H": "atypical squamous cells, cannot exclude a high-grade lesion",
    "LSIL": "low-grade squamous intraepithelial lesion cells",
    "HSIL": "high-grade squamous intraepithelial lesion cells",
    "SCC": "squamous cell carcinoma cells",
    "AGC": "atypical glandular cells",
    "ADC": "adenocarcinoma cells",
}

CLASS_TEXTS: dict[str, dict[str, str]] = {
    "sipakmed": {
        "Dyskeratotic": "dyskeratotic squamous cells",
        "Koilocytotic": "koilocytotic squamous cells",
        "Metaplastic": "metaplastic squamous cells",
        "Parabasal": "parabasal squamous cells",
        "Superficial-Intermediate": "superficial and intermediate squamous cells",
    },
    "mlcc": {name: BETHESDA[name] for name in ("NILM", "LSIL", "HSIL", "SCC")},
    "bcfc": {
        "benign": "benign cells of a body cavity fluid effusion",
        "malignant": "malignant tumour cells of a body cavity fluid effusion",
    },
    "hicervix": BETHESDA,
}


def default_class_text(layout: str, name: str) -> str:
    """The text of class `name` of a dataset in `layout` when the study gives none."""
    return CLASS_TEXTS.get(layout, {}).get(name, name.replace("_", " "))


def class_prompts(
    layout: str, dataset: str, classes: Sequence[str], prompts: PromptSettings | None
) -> list[list[str]]:
    """Each class's prompts, in class order: every template filled with each of the class's texts.

    CytotuneError when `prompts.classes` names a class the dataset does not have.
    """
    prompts = prompts or PromptSettings()
    unknown = sorted(set(prompts.classes) - set(classes))
    if unknown:
        raise CytotuneError(
            f"prompts.classes of dataset {dataset!r}: {', '.join(map(repr, unknown))} not a class of it; "
            f"expected some of: {', '.join(classes)}"
        )
    templates = prompts.templates or DEFAULT_TEMPLATES
    out = []
    for name in classes:
        given = prompts.classes.get(name, default_class_text(layout, name))
        texts = (given,) if isinstance(given, str) else given
        out.append([template.replace("{}", text) for text in texts for template in templates])
    return out
