"""The classifier a vision-language backbone's text tower makes from class prompts, and what uses it.

The classifier is one L2-normalised row per class, the mean of its prompts' normalised text embeddings, with
the checkpoint's logit scale. zero_shot scores `logit_scale * cos(image embedding, class row)` (CLIP's
zero-shot logits, on the cached image embeddings); `head_init: text` starts a Linear head at
`logit_scale / m * class rows` with zero bias, where m is the mean L2 norm of the train images' features, so
that the head's first logits are CLIP's zero-shot logits for an image of average norm and its first
predictions are exactly zero-shot's (as CLIP-LoRA starts its classifier from the text embeddings).

Class embeddings are cached per (backbone weights, prompts) under the cache folder, computed once under a
lock like the feature cache.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from cytotune.config import TrialTemplate
from cytotune.data.files import atomic_write_bytes, file_lock
from cytotune.data.prompts import class_prompts
from cytotune.models.text import load_text_encoder, text_tower_spec
from cytotune.train.features import weights_identity


@dataclass(frozen=True)
class TextClassifier:
    """Class rows (C, D) float32, L2-normalised, in class order, and the logit scale they are used with."""

    weight: torch.Tensor
    logit_scale: float


def _classifier_path(cache_dir: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return Path(cache_dir) / "text" / f"{key['backbone']}-{digest}.npz"


def text_classifier(cfg: TrialTemplate, classes: list[str]) -> TextClassifier:
    """The text classifier of the trial's backbone for its dataset's classes and prompts (cached on disk)."""
    tower = text_tower_spec(cfg.backbone)
    prompts = class_prompts(cfg.dataset_layout, cfg.dataset, classes, cfg.prompts)
    key = {
        "backbone": cfg.backbone,
        "weights": weights_identity(cfg.backbone, cfg.weights),
        "text_tower": asdict(tower),
        "prompts": prompts,
    }
    path = _classifier_path(cfg.cache_dir, key)
    if not path.exists():
        with file_lock(path.with_suffix(".lock")):
            if not path.exists():
                encoder = load_text_encoder(cfg.backbone, cfg.weights)
                weight = encoder.class_embeddings(prompts).numpy()
                buffer = io.BytesIO()
                np.savez(buffer, weight=weight, logit_scale=np.float64(encoder.logit_scale))
                atomic_write_bytes(path, buffer.getvalue())
    with np.load(path) as stored:
        return TextClassifier(torch.from_numpy(stored["weight"]), float(stored["logit_scale"]))


def zero_shot_logits(features: torch.Tensor, classifier: TextClassifier) -> torch.Tensor:
    """CLIP's zero-shot logits (N, C): logit_scale times the cosine of each image embedding and class row."""
    images = torch.nn.functional.normalize(features.double(), dim=-1)
    return classifier.logit_scale * images @ classifier.weight.to(images).T


def text_head(classifier: TextClassifier, train_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A Linear head's weight (C, D) and zero bias (C,) started from the class rows, scaled by the logit
    scale over the mean L2 norm of `train_features` (N, D), in their dtype and device."""
    norm = train_features.float().norm(dim=-1).mean().clamp(min=1e-12)
    weight = classifier.weight.to(train_features.device) * (classifier.logit_scale / norm)
    weight = weight.to(train_features.dtype)
    return weight, torch.zeros(len(weight), dtype=weight.dtype, device=weight.device)
