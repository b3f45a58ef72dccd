"""`cytotune bench data`: one epoch of eval and train batches from the image caches against PIL per item."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from cytotune.bench.common import fastest_epoch, set_threads, work_folder
from cytotune.data.cache import open_eval_cache, open_image_cache
from cytotune.data.manifest import prepare_dataset
from cytotune.data.synthetic import generate_synthetic
from cytotune.data.transforms import eval_transform, train_transform

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BICUBIC = T.InterpolationMode.BICUBIC


@dataclass(frozen=True)
class DataBenchResult:
    """Seconds for one epoch of the same batches, evaluation and training views each read from the caches
    and decoded by PIL per item, side by side in one run (each the fastest of a few epochs)."""

    source: str
    images: int
    batch_size: int
    train_side: int
    input_size: int
    device: str
    pil_eval_seconds: float
    eval_seconds: float
    pil_train_seconds: float
    train_seconds: float
    build_seconds: float | None
    eval_build_seconds: float | None

    @property
    def eval_ratio(self) -> float:
        """How many times faster eval batches come from the eval cache than from PIL per item."""
        return self.pil_eval_seconds / self.eval_seconds

    @property
    def train_ratio(self) -> float:
        """How many times faster augmented train batches come from the training view than from PIL."""
        return self.pil_train_seconds / self.train_seconds

    def lines(self) -> list[str]:
        """The result as printable lines."""
        per = 1000 / self.images

        def built(seconds: float | None) -> str:
            return f"built in {seconds:.1f} s" if seconds is not None else "reused"

        def row(name: str, seconds: float) -> str:
            return f"{name:<40}{seconds:8.3f} s/epoch  ({seconds * per:.2f} ms/image)"

        return [
            f"data: {self.source}; {self.images} images, batch {self.batch_size}, input {self.input_size}px, "
            f"device {self.device}, {torch.get_num_threads()} torch threads",
            f"caches: training view, shorter side {self.train_side}px ({built(self.build_seconds)}); "
            f"evaluation view {self.input_size}px ({built(self.eval_build_seconds)})",
            row("eval:  PIL + torchvision per item", self.pil_eval_seconds),
            row("eval:  eval cache batch + eval_transform", self.eval_seconds),
            row("train: PIL + torchvision per item", self.pil_train_seconds),
            row("train: training view + train_transform", self.train_seconds),
            f"ratio: eval {self.eval_ratio:.1f}x, train {self.train_ratio:.1f}x faster than PIL per item "
            "(target >= 10x)",
        ]


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
    """Time an epoch of eval batches (eval cache + eval_transform) and of augmented train batches (training
    view with shorter side `cache_size` + train_transform) against PIL + torchvision per item (each the
    fastest of `repeats` epochs); without `root`, on a synthetic set (4 classes x per_class images of
    image_size px) in a temporary folder."""
    set_threads(threads)
    with work_folder(None) as tmp:
        if root is None:
            root = generate_synthetic(tmp / "data", 4, per_class, image_size, 0, image_format)
            dataset, cache_dir = "synthetic", tmp / "cache"
            source = f"synthetic, 4 x {per_class} {image_format.upper()} images of {image_size}px"
        else:
            source = f"{dataset} at {root}"
        manifest = prepare_dataset(dataset, root, cache_dir=cache_dir)
        train_images = open_image_cache(manifest, cache_size, cache_dir)
        eval_images = open_eval_cache(manifest, input_size, cache_dir)
        target = torch.device(device)
        order = np.random.default_rng(0).permutation(len(manifest))
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        normalise = [T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)]
        pil_eval = T.Compose([T.Resize(input_size, BICUBIC), T.CenterCrop(input_size), *normalise])
        pil_train = T.Compose(
            [T.RandomResizedCrop(input_size, interpolation=BICUBIC), T.RandomHorizontalFlip(), *normalise]
        )
        generator = torch.Generator(device=target).manual_seed(0)

        def from_pil(per_item: T.Compose):
            def read(rows: np.ndarray) -> torch.Tensor:
                images = []
                for i in rows:
                    with Image.open(manifest.image_path(int(i))) as image:
                        images.append(per_item(image.convert("RGB")))
                return torch.stack(images).to(target)

            return read

        def from_eval_cache(rows: np.ndarray) -> torch.Tensor:
            return eval_transform(eval_images.batch(rows).to(target), input_size, CLIP_MEAN, CLIP_STD)

        def from_train_view(rows: np.ndarray) -> torch.Tensor:
            images = train_images.batch(rows)
            return train_transform(images, input_size, CLIP_MEAN, CLIP_STD, generator, device=target)

        return DataBenchResult(
            source=source,
            images=len(manifest),
            batch_size=batch_size,
            train_side=cache_size,
            input_size=input_size,
            device=str(target),
            eval_seconds=fastest_epoch(from_eval_cache, batches, target, repeats),
            train_seconds=fastest_epoch(from_train_view, batches, target, repeats),
            pil_eval_seconds=fastest_epoch(from_pil(pil_eval), batches, target, repeats),
            pil_train_seconds=fastest_epoch(from_pil(pil_train), batches, target, repeats),
            build_seconds=train_images.build_seconds,
            eval_build_seconds=eval_images.build_seconds,
        )
