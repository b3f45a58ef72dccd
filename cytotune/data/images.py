"""Reading images as 8-bit RGB, whatever their mode, and resizing them to the training and eval views."""

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


def shorter_side_to(width: int, height: int, side: int) -> tuple[int, int]:
    """(width, height) with the shorter side resized to `side` and the aspect ratio kept, the longer side
    truncated as torchvision's Resize(side) computes it."""
    if width <= height:
        return side, int(side * height / width)
    return int(side * width / height), side


def train_view_size(width: int, height: int, side: int) -> tuple[int, int]:
    """(width, height) of an image's training view: shorter side shrunk to `side`, never enlarged."""
    return (width, height) if min(width, height) <= side else shorter_side_to(width, height, side)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, from its header."""
    with Image.open(path) as image:
        return image.size


def load_resized(path: Path, size: tuple[int, int]) -> np.ndarray:
    """An image file as 8-bit RGB resized (bicubic, antialiased, as torchvision resizes PIL images) to
    size = (width, height), uint8 (height, width, 3); JPEGs decode at a reduced scale that keeps at least
    twice the pixels asked for per side."""
    with Image.open(path) as image:
        if image.format == "JPEG":
            image.draft("RGB", (2 * size[0], 2 * size[1]))
        rgb = to_rgb(image)
        if rgb.size != size:
            rgb = rgb.resize(size, Image.Resampling.BICUBIC)
        return np.asarray(rgb, dtype=np.uint8)


def load_train_view(path: Path, side: int) -> np.ndarray:
    """An image file's training view: aspect ratio kept, shorter side shrunk to `side` (never enlarged),
    uint8 (height, width, 3)."""
    return load_resized(path, train_view_size(*image_size(path), side))


def load_eval_view(path: Path, input_size: int) -> np.ndarray:
    """An image file's evaluation view, as torchvision's Resize(input_size, BICUBIC) + CenterCrop(input_size)
    gives it: shorter side resized to input_size, central square, uint8 (input_size, input_size, 3)."""
    width, height = shorter_side_to(*image_size(path), input_size)
    left = int(round((width - input_size) / 2.0))
    top = int(round((height - input_size) / 2.0))
    resized = load_resized(path, (width, height))
    return np.ascontiguousarray(resized[top : top + input_size, left : left + input_size])
