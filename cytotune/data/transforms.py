"""Eval and train transforms on batches of uint8 image tensors, on whatever device the tensors are."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from cytotune.data.images import shorter_side_to


def _check(x: torch.Tensor) -> torch.Tensor:
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
        raise TypeError(f"expected a uint8 tensor (B, 3, H, W), got {x.dtype} {tuple(x.shape)}")
    return x


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bicubic, antialiased resize of uint8 images: on the CPU through torch's fast uint8 kernel (uint8 out),
    elsewhere in float32 (clamped to [0, 255])."""
    same = tuple(x.shape[-2:]) == (height, width)
    if x.device.type == "cpu":
        return x if same else F.interpolate(x, size=(height, width), mode="bicubic", antialias=True)
    if same:
        return x.float()
    resized = F.interpolate(x.float(), size=(height, width), mode="bicubic", antialias=True)
    return resized.clamp_(0, 255)


def _normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x / 255 - mean) / std per channel as float32, in one fused pass over uint8 or float input."""
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return torch.addcmul(-m / s, x, 1.0 / (255.0 * s))


def eval_resize(x: torch.Tensor, input_size: int) -> torch.Tensor:
    """Pixels of the evaluation view of a uint8 batch (B,3,H,W), before normalising, as torchvision's
    Resize(input_size, BICUBIC) + CenterCrop(input_size) give them: shorter side resized to input_size
    (bicubic, antialiased; the longer side truncated), central square; uint8 on the CPU, float32 in
    [0, 255] elsewhere."""
    _check(x)
    height, width = x.shape[-2:]
    new_w, new_h = shorter_side_to(width, height, input_size)
    resized = _resize(x, new_h, new_w)
    top = int(round((new_h - input_size) / 2.0))
    left = int(round((new_w - input_size) / 2.0))
    return resized[..., top : top + input_size, left : left + input_size]


def eval_transform(
    x: torch.Tensor, input_size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Evaluation view of a uint8 batch (B,3,H,W): shorter side resized to input_size (bicubic, antialiased),
    center crop, scaled to [0,1] and normalised; float32 (B,3,input_size,input_size) on x's device."""
    return _normalise(eval_resize(x, input_size), mean, std)


@contextmanager
def _one_thread_on(device: torch.device) -> Iterator[None]:
    """torch on one CPU thread while one image at a time is resized on the CPU: each resize is too small
    to share, and on a busy machine handing it to torch's other threads costs ten times the work."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def random_resized_crop_boxes(
    sizes: torch.Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Crop boxes (top, left, h, w), int64 (B, 4) on the CPU, for images of sizes (B, 2) = (height, width)
    each, drawn as torchvision's RandomResizedCrop draws them (10 tries, then a center crop) but from
    `generator` for a whole batch."""
    sizes = torch.as_tensor(sizes, dtype=torch.int64).reshape(-1, 2)
    batch, tries = sizes.shape[0], 10
    height, width = sizes[:, 0:1].double(), sizes[:, 1:2].double()
    draws = torch.rand(batch, tries, 2, generator=generator, device=generator.device).cpu().double()
    area = height * width * (scale[0] + draws[..., 0] * (scale[1] - scale[0]))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + draws[..., 1] * (log_hi - log_lo))
    crop_w = torch.round(torch.sqrt(area * aspect)).long()
    crop_h = torch.round(torch.sqrt(area / aspect)).long()
    valid = (crop_w > 0) & (crop_w <= sizes[:, 1:2]) & (crop_h > 0) & (crop_h <= sizes[:, 0:1])
    first = valid.long().argmax(dim=1)
    rows = torch.arange(batch)
    crop_h, crop_w = crop_h[rows, first], crop_w[rows, first]
    height, width = sizes[:, 0], sizes[:, 1]
    in_ratio = width.double() / height.double()
    narrow, wide = in_ratio < min(ratio), in_ratio > max(ratio)
    fallback_w = torch.where(wide, torch.round(height * max(ratio)).long(), width)
    fallback_h = torch.where(narrow, torch.round(width / min(ratio)).long(), height)
    found = valid.any(dim=1)
    crop_h = torch.where(found, crop_h, fallback_h)
    crop_w = torch.where(found, crop_w, fallback_w)
    where = torch.rand(batch, 2, generator=generator, device=generator.device).cpu().double()
    top = torch.floor(where[:, 0] * (height - crop_h + 1)).long()
    left = torch.floor(where[:, 1] * (width - crop_w + 1)).long()
    top = torch.where(found, top, (height - crop_h) // 2)
    left = torch.where(found, left, (width - crop_w) // 2)
    return torch.stack([top, left, crop_h, crop_w], dim=1)


def train_transform(
    images: Sequence[torch.Tensor],
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_p: float = 0.5,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Training view of uint8 images (3,H,W), each at its own size (a list, or a (B,3,H,W) batch): random
    resized crop (bicubic, antialiased) to input_size, random horizontal flip, normalised; float32 on
    `device` (default: the images' device), the same for the same generator state. Only the crops travel
    to `device`, channels-last (the fast layout of torch's uint8 resize: about 3x a strided crop's speed)."""
    for image in images:
        _check(image[None])
    target = torch.device(device) if device is not None else images[0].device
    sizes = torch.tensor([tuple(image.shape[-2:]) for image in images], dtype=torch.int64)
    boxes = random_resized_crop_boxes(sizes, generator, scale, ratio)
    flips = (torch.rand(len(images), generator=generator, device=generator.device) < flip_p).cpu()
    crops = None
    with _one_thread_on(target):
        for i, (image, (top, left, crop_h, crop_w), flip) in enumerate(
            zip(images, boxes.tolist(), flips.tolist(), strict=True)
        ):
            crop = image[None, :, top : top + crop_h, left : left + crop_w].to(target, non_blocking=True)
            crop = _resize(crop.contiguous(memory_format=torch.channels_last), input_size, input_size)[0]
            if crops is None:
                crops = crop.new_empty((len(images), *crop.shape))
            crops[i] = crop.flip(-1) if flip else crop
    return _normalise(crops, mean, std)
