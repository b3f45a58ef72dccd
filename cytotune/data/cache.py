"""The decoded-image cache: every image of a manifest decoded and shrunk once into a shared uint8 memmap."""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from cytotune.config import default_cache_dir
from cytotune.data.files import file_lock, temporary_sibling
from cytotune.data.images import load_resized
from cytotune.data.manifest import Manifest
from cytotune.data.progress import default_workers, map_with_progress, progress_bar
from cytotune.data.transforms import eval_resize
from cytotune.errors import CytotuneError

log = logging.getLogger("cytotune.data")

_EVAL_CHUNK = 256  # images resized per batch while building an eval cache


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


def _write_atomically(path: Path, count: int, size: int, fill: Callable[[np.memmap], None]) -> float:
    """Fill a new (count, size, size, 3) uint8 file with `fill` under a temporary name, then rename it onto
    `path`; returns the seconds taken."""
    started = time.perf_counter()
    tmp = temporary_sibling(path)
    try:
        array = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(count, size, size, 3))
        fill(array)
        array.flush()
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return time.perf_counter() - started


def _open_or_build(path: Path, count: int, size: int, fill: Callable[[np.memmap], None]) -> ImageCache:
    """The cache file at `path`, filled by `fill` once if missing; concurrent callers wait for the builder
    and never see a half-written file."""
    if _complete(path, count, size):
        return ImageCache(path, count, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_suffix(".lock")):
        if _complete(path, count, size):
            return ImageCache(path, count, size)
        seconds = _write_atomically(path, count, size, fill)
    return ImageCache(path, count, size, build_seconds=seconds)


def _log_build(cache: ImageCache, what: str) -> None:
    if cache.build_seconds is not None:
        seconds = cache.build_seconds
        log.info(
            "%s: %d images at %dx%d in %.1f s (%.0f images/s) -> %s",
            what,
            len(cache),
            cache.size,
            cache.size,
            seconds,
            len(cache) / max(seconds, 1e-9),
            cache.path,
        )


def open_image_cache(
    manifest: Manifest, size: int = 256, cache_dir: Path | str | None = None, workers: int | None = None
) -> ImageCache:
    """The image cache of `manifest` at `size`, built once if missing; concurrent callers wait for the builder
    and never see a half-written file."""
    if size < 8:
        raise CytotuneError(f"image cache size {size} is invalid: expected at least 8 pixels")
    threads = workers or default_workers()

    def decode_all(array: np.memmap) -> None:
        decode = functools.partial(_decode_into, array, manifest, size)
        map_with_progress(decode, range(len(manifest)), f"caching {manifest.dataset} at {size}px", threads)

    cache = _open_or_build(image_cache_path(manifest, size, cache_dir), len(manifest), size, decode_all)
    _log_build(cache, f"image cache of {manifest.dataset} decoded ({threads} threads)")
    return cache


def eval_cache_path(
    manifest: Manifest, input_size: int, size: int = 256, cache_dir: Path | str | None = None
) -> Path:
    """Where the evaluation view at `input_size` of the image cache at `size` lives, next to that cache."""
    source = image_cache_path(manifest, size, cache_dir)
    return source.with_name(f"{source.stem}-eval{input_size}{source.suffix}")


def open_eval_cache(
    manifest: Manifest, input_size: int, size: int = 256, cache_dir: Path | str | None = None
) -> ImageCache:
    """The evaluation view of the image cache at `size`: every image resized once to input_size exactly as
    eval_transform resizes a CPU batch, so eval_transform on its batches only normalises and gives the same
    values; built once (atomically) from the image cache, which is the answer when input_size == size."""
    if input_size < 8:
        raise CytotuneError(f"evaluation input size {input_size} is invalid: expected at least 8 pixels")
    source = open_image_cache(manifest, size, cache_dir)
    if input_size == size:
        return source

    def resize_all(array: np.memmap) -> None:
        with progress_bar(f"eval view of {manifest.dataset} at {input_size}px", len(source)) as advance:
            for lo in range(0, len(source), _EVAL_CHUNK):
                rows = np.arange(lo, min(lo + _EVAL_CHUNK, len(source)))
                array[rows] = eval_resize(source.batch(rows), input_size).permute(0, 2, 3, 1).numpy()
                advance(len(rows))

    path = eval_cache_path(manifest, input_size, size, cache_dir)
    cache = _open_or_build(path, len(source), input_size, resize_all)
    _log_build(cache, f"eval cache of {manifest.dataset} resized from {size}px")
    return cache


def open_eval_images(
    manifest: Manifest,
    input_size: int,
    size: int,
    cache_dir: Path | str | None,
    device: torch.device | str,
) -> ImageCache:
    """Where evaluation batches for `device` are read from before eval_transform: on the CPU the eval cache
    (same values, no resize per batch); elsewhere the image cache, resized on the device in float32 as before
    (the uint8 eval cache would round those values)."""
    if torch.device(device).type == "cpu":
        return open_eval_cache(manifest, input_size, size, cache_dir)
    return open_image_cache(manifest, size, cache_dir)
