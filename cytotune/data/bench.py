"""`cytotune bench data`: one epoch of batches from the image cache against per-item PIL decoding."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from cytotune.data.cache import open_eval_cache, open_image_cache
from cytotune.data.manifest import prepare_dataset
from cytotune.data.synthetic import generate_synthetic
from cytotune.data.transforms import eval_transform

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class DataBenchResult:
    """Seconds for one epoch of the same batches, read four ways, side by side in one run (each the fastest
    of a few epochs)."""

    source: str
    images: int
    batch_size: int
    cache_size: int
    input_size: int
    device: str
    pil_seconds: float
    cache_seconds: float
    cache_read_seconds: float
    eval_cache_seconds: float
    build_seconds: float | None
    eval_build_seconds: float | None

    @property
    def ratio(self) -> float:
        """How many times faster the faster of the two normalised cache paths (image cache + eval_transform,
        eval cache + normalise) is than PIL per item."""
        return self.pil_seconds / min(self.cache_seconds, self.eval_cache_seconds)

    def lines(self) -> list[str]:
        """The result as printable lines."""
        per = 1000 / self.images
        built = f"built in {self.build_seconds:.1f} s" if self.build_seconds is not None else "reused"
        if self.eval_build_seconds is not None:
            built += f"; eval cache {self.input_size}px built in {self.eval_build_seconds:.1f} s"
        paths = [
            ("cache batch + eval_transform", self.cache_seconds),
            ("eval cache batch + normalise", self.eval_cache_seconds),
        ]
        (headline, _), (other, other_seconds) = sorted(paths, key=lambda path: path[1])
        return [
            f"data: {self.source}; {self.images} images, batch {self.batch_size}, "
            f"cache {self.cache_size}px ({built}), "
            f"input {self.input_size}px, device {self.device}, {torch.get_num_threads()} torch threads",
            f"PIL + torchvision per item:   {self.pil_seconds:8.3f} s/epoch  "
            f"({self.pil_seconds * per:.2f} ms/image)",
            f"cache batch + eval_transform: {self.cache_seconds:8.3f} s/epoch  "
            f"({self.cache_seconds * per:.2f} ms/image)",
            f"eval cache batch + normalise: {self.eval_cache_seconds:8.3f} s/epoch  "
            f"({self.eval_cache_seconds * per:.2f} ms/image)",
            f"cache batch only (uint8):     {self.cache_read_seconds:8.3f} s/epoch  "
            f"({self.cache_read_seconds * per:.2f} ms/image)",
            f"ratio: cache is {self.ratio:.1f}x faster than PIL per item ({headline}; "
            f"{self.pil_seconds / other_seconds:.1f}x with {other}, "
            f"{self.pil_seconds / self.cache_read_seconds:.1f}x for the uint8 batches alone; target >= 10x)",
        ]


def _timed(fn, batches: list[np.ndarray], device: torch.device, repeats: int) -> float:
    """Seconds for one epoch over `batches`: the fastest of `repeats` epochs, after one warm-up batch."""
    fn(batches[0])
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        for rows in batches:
            fn(rows)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    return best


def bench_data(
    root: Path | None = None,
    *,
    dataset: str = "folder",
    cache_size: int = 256,
    input_size: int = 224,
    batch_size: int = 32,
    image_size: int = 448,
    per_class: int = 64,
    image_format: str = "jpg",
    device: str = "cpu",
    cache_dir: Path | None = None,
    threads: int | None = None,
    repeats: int = 2,
) -> DataBenchResult:
    """Time an epoch of eval batches from the image cache and from the eval cache against PIL + torchvision
    decoding per item (each the fastest of `repeats` epochs); without `root`, on a synthetic set (4 classes x
    per_class images of image_size px) in a temporary folder."""
    if threads is not None:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="cytotune-bench-") as tmp:
        if root is None:
            root = generate_synthetic(Path(tmp) / "data", 4, per_class, image_size, 0, image_format)
            dataset, cache_dir = "synthetic", Path(tmp) / "cache"
            source = f"synthetic, 4 x {per_class} {image_format.upper()} images of {image_size}px"
        else:
            source = f"{dataset} at {root}"
        manifest = prepare_dataset(dataset, root, cache_dir=cache_dir)
        cache = open_image_cache(manifest, cache_size, cache_dir)
        eval_cache = open_eval_cache(manifest, input_size, cache_size, cache_dir)
        target = torch.device(device)
        order = np.random.default_rng(0).permutation(len(manifest))
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        per_item = T.Compose(
            [
                T.Resize(input_size, interpolation=T.InterpolationMode.BICUBIC),
                T.CenterCrop(input_size),
                T.ToTensor(),
                T.Normalize(CLIP_MEAN, CLIP_STD),
            ]
        )

        def from_pil(rows: np.ndarray) -> torch.Tensor:
            images = []
            for i in rows:
                with Image.open(manifest.image_path(int(i))) as image:
                    images.append(per_item(image.convert("RGB")))
            return torch.stack(images).to(target)

        def from_cache(rows: np.ndarray) -> torch.Tensor:
            return eval_transform(cache.batch(rows).to(target), input_size, CLIP_MEAN, CLIP_STD)

        def from_eval_cache(rows: np.ndarray) -> torch.Tensor:
            return eval_transform(eval_cache.batch(rows).to(target), input_size, CLIP_MEAN, CLIP_STD)

        cache_seconds = _timed(from_cache, batches, target, repeats)
        eval_cache_seconds = _timed(from_eval_cache, batches, target, repeats)
        read_seconds = _timed(cache.batch, batches, target, repeats)
        pil_seconds = _timed(from_pil, batches, target, repeats)
        return DataBenchResult(
            source=source,
            images=len(manifest),
            batch_size=batch_size,
            cache_size=cache_size,
            input_size=input_size,
            device=str(target),
            pil_seconds=pil_seconds,
            cache_seconds=cache_seconds,
            cache_read_seconds=read_seconds,
            eval_cache_seconds=eval_cache_seconds,
            build_seconds=cache.build_seconds,
            eval_build_seconds=eval_cache.build_seconds if eval_cache is not cache else None,
        )
