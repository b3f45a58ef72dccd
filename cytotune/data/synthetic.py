"""A synthetic cytology dataset: cell-like images whose classes differ in nucleus size, shape and stain."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cytotune.data.loaders import SYNTHETIC_MARKER
from cytotune.errors import CytotuneError

IMAGE_FORMATS = {"png": {"format": "PNG", "compress_level": 1}, "jpg": {"format": "JPEG", "quality": 90}}


@dataclass(frozen=True)
class _ClassLook:
    nucleus: float
    irregularity: float
    stain: np.ndarray
    chromatin: float


def synthetic_class_names(classes: int) -> list[str]:
    """Folder names of the synthetic classes, in label order (zero-padded so that they sort in that order)."""
    width = len(str(max(classes - 1, 0)))
    return [f"class_{c:0{width}d}" for c in range(classes)]


def _class_look(label: int, classes: int) -> _ClassLook:
    """Class `label` on a scale from normal-looking (small, round, pale nucleus) to abnormal (large,
    irregular, dark); neighbouring classes overlap once per-image variation is added."""
    t = label / max(classes - 1, 1)
    pale, dark = np.array([105.0, 110.0, 180.0]), np.array([70.0, 30.0, 105.0])
    return _ClassLook(
        nucleus=0.22 + 0.30 * t,
        irregularity=0.03 + 0.20 * t,
        stain=(1 - t) * pale + t * dark,
        chromatin=0.06 + 0.2 * t,
    )


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean noise varying smoothly over `cells` x `cells` blobs, float32 (size, size)."""
    coarse = rng.standard_normal((cells + 1, cells + 1), dtype=np.float32)
    pos = np.linspace(0, cells, size, dtype=np.float32)
    lo = np.minimum(pos.astype(int), cells - 1)
    frac = pos - lo
    rows = coarse[lo] * (1 - frac)[:, None] + coarse[lo + 1] * frac[:, None]
    return rows[:, lo] * (1 - frac)[None, :] + rows[:, lo + 1] * frac[None, :]


def _soft_mask(inside: np.ndarray, size: int) -> np.ndarray:
    """A mask that goes from 0 outside to 1 inside over about a pixel."""
    return np.clip(0.5 + inside * (size / 2.0), 0.0, 1.0)


def _polar(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, angle: float, elongation: float):
    """Radius and (cos, sin) of the angle around a center, in a frame rotated by `angle` and squeezed."""
    dy, dx = yy - np.float32(cy), xx - np.float32(cx)
    u = dx * np.float32(np.cos(angle)) + dy * np.float32(np.sin(angle))
    v = (dy * np.float32(np.cos(angle)) - dx * np.float32(np.sin(angle))) / np.float32(elongation)
    rho = np.hypot(u, v)
    safe = np.maximum(rho, np.float32(1e-6))
    return rho, u / safe, v / safe


def _wobble(
    cos1: np.ndarray, sin1: np.ndarray, amplitude: np.ndarray, phase: np.ndarray, first: int
) -> np.ndarray:
    """sum_k amplitude[k] cos((first + k) theta + phase[k]) from cos(theta), sin(theta), by angle addition."""
    cos_k, sin_k = cos1, sin1
    for _ in range(first - 1):
        cos_k, sin_k = cos_k * cos1 - sin_k * sin1, sin_k * cos1 + cos_k * sin1
    total = np.zeros_like(cos1)
    for a, p in zip(amplitude, phase, strict=True):
        total += np.float32(a * np.cos(p)) * cos_k - np.float32(a * np.sin(p)) * sin_k
        cos_k, sin_k = cos_k * cos1 - sin_k * sin1, sin_k * cos1 + cos_k * sin1
    return total


def _cell_image(
    rng: np.random.Generator, look: _ClassLook, size: int, yy: np.ndarray, xx: np.ndarray
) -> np.ndarray:
    """One cell on a textured background, uint8 (size, size, 3)."""
    background = (np.array([232.0, 222.0, 228.0]) + rng.normal(0, 6, 3)).astype(np.float32)
    image = background + np.float32(8.0) * _smooth_noise(rng, size, 5)[..., None]

    cy, cx = 0.5 + rng.normal(0, 0.05, 2)
    cell_r = rng.uniform(0.28, 0.40)
    rho, cos1, sin1 = _polar(yy, xx, cy, cx, rng.uniform(0, np.pi), rng.uniform(0.75, 1.0))
    edge = cell_r * (1 + _wobble(cos1, sin1, np.array([0.06]), rng.uniform(0, 2 * np.pi, 1), 3))
    cytoplasm = np.float32(0.85) * _soft_mask(edge - rho, size)[..., None]
    tint = np.array([228.0, 165.0, 190.0]) if rng.random() < 0.5 else np.array([160.0, 205.0, 205.0])
    image = image * (1 - cytoplasm) + (tint + rng.normal(0, 10, 3)).astype(np.float32) * cytoplasm

    nucleus_r = cell_r * np.clip(look.nucleus + rng.normal(0, 0.05), 0.1, 0.85)
    ny, nx = np.array([cy, cx]) + rng.normal(0, 0.12 * (cell_r - nucleus_r), 2)
    rho, cos1, sin1 = _polar(yy, xx, ny, nx, rng.uniform(0, np.pi), rng.uniform(0.8, 1.0))
    harmonics = np.arange(2, 6)
    amplitude = np.abs(rng.normal(look.irregularity, 0.04, harmonics.size)) / harmonics**0.5
    edge = nucleus_r * (1 + _wobble(cos1, sin1, amplitude, rng.uniform(0, 2 * np.pi, harmonics.size), 2))
    nucleus = _soft_mask(edge - rho, size)[..., None]
    chromatin = 1 + np.float32(look.chromatin) * _smooth_noise(rng, size, 10)[..., None]
    stain = (look.stain + rng.normal(0, 12, 3)).astype(np.float32) * chromatin
    image = image * (1 - nucleus) + stain * nucleus

    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(5.0)
    return np.clip(image, 0, 255).astype(np.uint8)


def generate_synthetic(
    out: Path | str,
    classes: int = 4,
    per_class: int = 40,
    size: int = 64,
    seed: int = 0,
    image_format: str = "png",
) -> Path:
    """Write a synthetic dataset to `out` (one folder per class, plus cytotune_synthetic.json), deterministic
    for a seed; returns `out`. Load it as dataset "synthetic" (or "folder")."""
    if classes < 2 or per_class < 1 or size < 16:
        raise CytotuneError(
            f"synthetic data: classes={classes}, per_class={per_class}, size={size} are invalid: expected "
            "classes >= 2, per_class >= 1, size >= 16"
        )
    if image_format not in IMAGE_FORMATS:
        raise CytotuneError(f"synthetic data: format {image_format!r} is invalid: expected png or jpg")
    out = Path(out)
    names = synthetic_class_names(classes)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / np.float32(size)
    for label, name in enumerate(names):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        look = _class_look(label, classes)
        for i in range(per_class):
            pixels = _cell_image(np.random.default_rng([seed, label, i]), look, size, yy, xx)
            Image.fromarray(pixels).save(
                folder / f"{name}_{i:04d}.{image_format}", **IMAGE_FORMATS[image_format]
            )
    marker = {"generator": "cytotune", "classes": names, "per_class": per_class, "size": size, "seed": seed}
    (out / SYNTHETIC_MARKER).write_text(json.dumps(marker, indent=1))
    return out
