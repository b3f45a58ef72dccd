"""The decoded-image caches of a manifest, each built once into a shared uint8 file.

Two views of every image: the training view keeps the aspect ratio with the shorter side shrunk to a given
side (never enlarged), images at their own sizes back to back (ragged); random resized crops are cut from it
at train time. The evaluation view is what the model sees at evaluation, computed once from the original:
shorter side resized to the input size, central square.

The training view's side (train.image_cache_size, 256 by default: 1.14x a 224 px input) bounds the detail a
crop keeps: detail finer than a pixel of the view is lost, and the smallest crops (8% of the area: about
80 px of a 256 px side) are enlarged about 2.8x, where torchvision on a 2048x1536 original would shrink a
~500 px crop. A larger side keeps more; the file grows with its square (a 2048x1536 image: 262 KB at 256).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cytotune.config import default_cache_dir
from cytotune.data.files import file_lock, temporary_sibling
from cytotune.data.images import image_size, load_eval_view, load_resized, train_view_size
from cytotune.data.manifest import Manifest
from cytotune.data.progress_bar import default_workers, map_with_progress
from cytotune.errors import CytotuneError

log = logging.getLogger("cytotune.data")

# Part of every cache file's name: bump it whenever what a cache file holds changes, so that a file written
# with another layout is never read as this one (layout 1: one unversioned 256 px centre square per image).
CACHE_LAYOUT = 2
_SHAPE_BYTES = 16  # a training-view file starts with (height, width) as two int64 per image


def _rows(indices: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(indices, torch.Tensor):
        indices = indices.cpu().numpy()
    return np.asarray(indices, dtype=np.int64).reshape(-1)


class ImageCache:
    """The evaluation view of one manifest: read-only uint8 memmap (N, size, size, 3), row i = manifest row i.

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
        return torch.from_numpy(np.ascontiguousarray(self.images[_rows(indices)])).permute(0, 3, 1, 2)


class TrainImages:
    """The training view of one manifest: image i with its aspect ratio, shorter side shrunk to `side` (never
    enlarged). One file: the (height, width) of every image as int64, then each image's uint8 (h, w, 3)
    pixels back to back. Pickles as its path."""

    def __init__(self, path: Path, count: int, side: int, build_seconds: float | None = None) -> None:
        self.path = Path(path)
        self.side = side
        self.build_seconds = build_seconds
        self.shapes = np.fromfile(self.path, dtype=np.int64, count=2 * count).reshape(count, 2)
        self.offsets = np.concatenate([[0], np.cumsum(self.shapes.prod(axis=1) * 3)])
        # copy-on-write mapping: pages are shared and read from the file, and torch gets writable arrays
        self.pixels = np.memmap(
            self.path, dtype=np.uint8, mode="c", offset=count * _SHAPE_BYTES, shape=(int(self.offsets[-1]),)
        )

    def __len__(self) -> int:
        return self.shapes.shape[0]

    def __reduce__(self):
        return (TrainImages, (self.path, len(self), self.side, self.build_seconds))

    def image(self, index: int) -> torch.Tensor:
        """Image `index` as a uint8 tensor (3, height, width) on the CPU: a view of the file, not a copy."""
        height, width = self.shapes[index]
        pixels = self.pixels[self.offsets[index] : self.offsets[index + 1]].reshape(height, width, 3)
        return torch.from_numpy(pixels).permute(2, 0, 1)

    def batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> list[torch.Tensor]:
        """The images at positional `indices`, each a uint8 tensor (3, height, width) at its own size."""
        return [self.image(int(i)) for i in _rows(indices)]


def _base_name(manifest: Manifest, cache_dir: Path | str | None) -> Path:
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return base / "images" / f"{manifest.dataset}-{manifest.digest[:16]}"


def image_cache_path(manifest: Manifest, size: int, cache_dir: Path | str | None = None) -> Path:
    """Where the training view of `manifest` with shorter side `size` lives: keyed by dataset, manifest
    digest, side and cache layout."""
    stem = _base_name(manifest, cache_dir)
    return stem.with_name(f"{stem.name}-train{size}-v{CACHE_LAYOUT}.u8")


def eval_cache_path(manifest: Manifest, input_size: int, cache_dir: Path | str | None = None) -> Path:
    """Where the evaluation view of `manifest` at `input_size` lives: keyed by dataset, manifest digest,
    input size and cache layout."""
    stem = _base_name(manifest, cache_dir)
    return stem.with_name(f"{stem.name}-eval{input_size}-v{CACHE_LAYOUT}.u8")


def _decoded(manifest: Manifest, index: int, read: Callable[[Path], object]):
    image_path = manifest.image_path(index)
    try:
        return read(image_path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise CytotuneError(
            f"cannot decode {image_path} while building the image cache ({err}): expected the image checked "
            "when the manifest was prepared; run `cytotune data prepare` again"
        ) from err


def _write_atomically(path: Path, fill: Callable[[Path], None]) -> float:
    """Write a new file with `fill` under a temporary name, then rename it onto `path`; the seconds taken."""
    started = time.perf_counter()
    tmp = temporary_sibling(path)
    try:
        fill(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return time.perf_counter() - started


def _open_or_build(path: Path, read: Callable[[float | None], object | None], fill: Callable[[Path], None]):
    """The cache file at `path` opened by `read` (None while it is missing or incomplete), written by `fill`
    once if needed; concurrent callers wait for the builder and never see a half-written file."""
    cache = read(None)
    if cache is not None:
        return cache
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_suffix(".lock")):
        cache = read(None)
        if cache is not None:
            return cache
        seconds = _write_atomically(path, fill)
    return read(seconds)


def _log_build(what: str, count: int, seconds: float | None, path: Path) -> None:
    if seconds is not None:
        log.info("%s: %d images in %.1f s (%.0f images/s) -> %s", what, count, seconds, count / seconds, path)


def _read_train(path: Path, count: int, side: int, seconds: float | None) -> TrainImages | None:
    """The training view at `path` when the file is complete for `count` images, else None."""
    if not path.is_file() or path.stat().st_size < count * _SHAPE_BYTES:
        return None
    shapes = np.fromfile(path, dtype=np.int64, count=2 * count)
    if (shapes <= 0).any() or path.stat().st_size != count * _SHAPE_BYTES + int(
        shapes.reshape(-1, 2).prod(1).sum()
    ) * 3:
        return None
    return TrainImages(path, count, side, seconds)


def open_image_cache(
    manifest: Manifest, size: int = 256, cache_dir: Path | str | None = None, workers: int | None = None
) -> TrainImages:
    """The training view of `manifest` with shorter side `size` (never enlarged, aspect ratio kept), built
    once if missing; concurrent callers wait for the builder and never see a half-written file."""
    if size < 8:
        raise CytotuneError(f"image cache size {size} is invalid: expected at least 8 pixels")
    threads = workers or default_workers()
    count = len(manifest)
    path = image_cache_path(manifest, size, cache_dir)

    def fill(tmp: Path) -> None:
        sizes = map_with_progress(
            functools.partial(_decoded, manifest, read=image_size),
            range(count),
            f"sizing {manifest.dataset}",
            threads,
        )
        shapes = np.array([train_view_size(w, h, size)[::-1] for w, h in sizes], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(shapes.prod(axis=1) * 3)])
        with open(tmp, "wb") as handle:
            handle.write(shapes.tobytes())
            handle.truncate(count * _SHAPE_BYTES + int(offsets[-1]))
        pixels = np.memmap(
            tmp, dtype=np.uint8, mode="r+", offset=count * _SHAPE_BYTES, shape=(int(offsets[-1]),)
        )

        def decode(index: int) -> None:
            height, width = shapes[index]
            view = _decoded(manifest, index, lambda p: load_resized(p, (int(width), int(height))))
            pixels[offsets[index] : offsets[index + 1]] = view.reshape(-1)

        map_with_progress(
            decode, range(count), f"caching {manifest.dataset} (shorter side {size}px)", threads
        )
        pixels.flush()

    cache = _open_or_build(path, lambda seconds: _read_train(path, count, size, seconds), fill)
    _log_build(f"training view of {manifest.dataset} ({threads} threads)", count, cache.build_seconds, path)
    return cache


def open_eval_cache(
    manifest: Manifest, input_size: int, cache_dir: Path | str | None = None, workers: int | None = None
) -> ImageCache:
    """The evaluation view of `manifest` at `input_size`, decoded from the original images as torchvision's
    Resize(input_size, BICUBIC) + CenterCrop(input_size) give it (eval_transform on its batches only
    normalises); built once if missing, atomically."""
    if input_size < 8:
        raise CytotuneError(f"evaluation input size {input_size} is invalid: expected at least 8 pixels")
    threads = workers or default_workers()
    count = len(manifest)
    path = eval_cache_path(manifest, input_size, cache_dir)

    def read(seconds: float | None) -> ImageCache | None:
        if not path.is_file() or path.stat().st_size != count * input_size * input_size * 3:
            return None
        return ImageCache(path, count, input_size, seconds)

    def fill(tmp: Path) -> None:
        array = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(count, input_size, input_size, 3))

        def decode(index: int) -> None:
            array[index] = _decoded(manifest, index, lambda p: load_eval_view(p, input_size))

        map_with_progress(decode, range(count), f"eval view of {manifest.dataset} at {input_size}px", threads)
        array.flush()

    cache = _open_or_build(path, read, fill)
    _log_build(f"evaluation view of {manifest.dataset} ({threads} threads)", count, cache.build_seconds, path)
    return cache
