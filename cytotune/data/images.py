"""Reading images as 8-bit RGB, whatever their mode, and shrinking them to a square of a given size."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})


def is_image_file(path: Path) -> bool:
    """Whether a path names an image file cytotune reads (by extension; hidden files excluded)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def to_rgb(image: Image.Image) -> Image.Image:
    """The image as 8-bit RGB: grayscale, palette, alpha and 16-bit images are converted, not rejected."""
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        if image.mode != "F" and values.max(initial=0) > 255:
            values = values / 257.0
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def inspect_image(path: Path) -> tuple[str, str | None]:
    """The sha1 of an image file's bytes and, when it cannot be decoded, the reason (else None)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        return "", f"cannot read: {err.strerror or err}"
    digest = hashlib.sha1(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format == "JPEG":
                image.draft("RGB", (64, 64))
            to_rgb(image).load()
    except UnidentifiedImageError:
        return digest, "not a recognised image format"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return digest, f"{type(err).__name__}: {err}"
    return digest, None


def resize_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """Shorter side resized to `size` (bicubic), then the central square, as uint8 (size, size, 3)."""
    image = to_rgb(image)
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    square = image.crop((left, top, left + size, top + size))
    return np.asarray(square, dtype=np.uint8)


def load_resized(path: Path, size: int) -> np.ndarray:
    """One image file decoded and shrunk as the image cache stores it: uint8 (size, size, 3)."""
    with Image.open(path) as image:
        if image.format == "JPEG":
            image.draft("RGB", (size, size))
        return resize_center_crop(image, size)
