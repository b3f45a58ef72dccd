"""The decoded-image cache: every image of a manifest decoded and shrunk once into a shared uint8 memmap."""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cytotune.config import default_cache_dir
from cytotune.data.files import file_lock, temporary_sibling
from cytotune.data.images import load_resized
from cytotune.data.manifest import Manifest
from cytotune.data.progress import default_workers, map_with_progress
from cytotune.errors import CytotuneError

log = logging.getLogger("cytotune.data")


class ImageCache:
    """Images of one manifest at one size: read-only uint8 memmap (N, size, size, 3), row i = manifest row i.

    Pickles as its path (workers reopen the memmap instead of copying it)."""

    def __init__(self, path: Path, count: int, size: int, build_seconds: float | None = None) -> None:
        self.path = Path(path)
        self.size = size
        self.build_seconds = build_seconds
        self.images = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(count, size, size, 3))

    def __len__(self) -> int:
        return self.images.shape[0]

    def __reduce__(self):
        return (ImageCache, (self.path, len(self), self.size, self.build_seconds))

    def batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """The images at positional `indices` as a uint8 tensor (B, 3, size, size) on the CPU, in
        channels-last memory format (the cache's own layout, and the fast one for torch's uint8 resizing)."""
        if isinstance(indices, torch.Tensor):
            indices = indices.cpu().numpy()
        rows = np.asarray(indices, dtype=np.int64).reshape(-1)
        return torch.from_numpy(np.ascontiguousarray(self.images[rows])).permute(0, 3, 1, 2)


def image_cache_path(manifest: Manifest, size: int, cache_dir: Path | str | None = None) -> Path:
    """Where the image cache of `manifest` at `size` lives: keyed by dataset, manifest digest and size."""
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return base / "images" / f"{manifest.dataset}-{manifest.digest[:16]}-{size}.u8"


def _complete(path: Path, count: int, size: int) -> bool:
    return path.is_file() and path.stat().st_size == count * size * size * 3


def _decode_into(array: np.memmap, manifest: Manifest, size: int, index: int) -> None:
    image_path = manifest.image_path(index)
    try:
        array[index] = load_resized(image_path, size)
    except (OSError, ValueError, SyntaxError) as err:
        raise CytotuneError(
            f"cannot decode {image_path} while building the image cache ({err}): expected the image checked "
            "when the manifest was prepared; run `cytotune data prepare` again"
        ) from err


def _build(manifest: Manifest, size: int, path: Path, workers: int | None) -> float:
    started = time.perf_counter()
    count = len(manifest)
    threads = workers or default_workers()
    tmp = temporary_sibling(path)
    try:
        array = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(count, size, size, 3))
        decode = functools.partial(_decode_into, array, manifest, size)
        map_with_progress(decode, range(count), f"caching {manifest.dataset} at {size}px", threads)
        array.flush()
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    log.info(
        "image cache: %d %s images decoded to %dx%d in %.1f s (%.0f images/s, %d threads) -> %s",
        count,
        manifest.dataset,
        size,
        size,
        seconds,
        count / max(seconds, 1e-9),
        threads,
        path,
    )
    return seconds


def open_image_cache(
    manifest: Manifest, size: int = 256, cache_dir: Path | str | None = None, workers: int | None = None
) -> ImageCache:
    """The image cache of `manifest` at `size`, built once if missing; concurrent callers wait for the builder
    and never see a half-written file."""
    if size < 8:
        raise CytotuneError(f"image cache size {size} is invalid: expected at least 8 pixels")
    path = image_cache_path(manifest, size, cache_dir)
    count = len(manifest)
    if _complete(path, count, size):
        return ImageCache(path, count, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_suffix(".lock")):
        if _complete(path, count, size):
            return ImageCache(path, count, size)
        seconds = _build(manifest, size, path, workers)
    return ImageCache(path, count, size, build_seconds=seconds)
