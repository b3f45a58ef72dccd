"""The training and evaluation views, read from the caches, against torchvision applied to the original image.

Images of real sizes and formats (a 2048x1536 MLCC-size JPEG, a portrait PNG, a BMP smaller than the input,
grayscale, RGBA and 16-bit PNGs). The evaluation view is torchvision's Resize + CenterCrop; the training view
is torchvision's resized_crop of the original at the same box (mapped from the stored view's pixels to the
original's), flipped the same way. Content varies over about 8 pixels of the stored view (48 of the 2048 px
original): the view's resolution, shorter side 256, is what it keeps, by design; finer detail of an image
larger than the view is lost (pixel noise of +-2 levels on a 600x450 image: about 1.8/255 per pixel).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from cytotune.data import open_eval_cache, open_image_cache, prepare_dataset
from cytotune.data.transforms import random_resized_crop_boxes, train_transform

INPUT, SIDE, CROPS = 224, 256, 12
BICUBIC = InterpolationMode.BICUBIC
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def cell_like(width: int, height: int, seed: int, feature: int) -> np.ndarray:
    """uint8 (height, width, 3) content that varies over about `feature` pixels."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, height // feature), max(2, width // feature), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))


def write_originals(root: Path) -> dict[str, Image.Image]:
    """One image per class folder; returns each file's name and its 8-bit RGB original, as expected."""
    originals = {}

    def save(name: str, image: Image.Image, rgb: Image.Image, **options) -> None:
        path = root / name.split(".")[0] / name
        path.parent.mkdir(parents=True)
        image.save(path, **options)
        originals[name] = rgb

    big = Image.fromarray(cell_like(2048, 1536, 0, 48))
    save("mlcc.jpg", big, big, quality=90)
    originals["mlcc.jpg"] = Image.open(root / "mlcc" / "mlcc.jpg").convert("RGB")  # full-scale decode
    portrait = Image.fromarray(cell_like(901, 1203, 1, 28))
    save("portrait.png", portrait, portrait, compress_level=1)
    small = Image.fromarray(np.random.default_rng(2).integers(0, 256, (143, 97, 3), dtype=np.uint8))
    save("small.bmp", small, small)  # smaller than the input: pixel noise, nothing to lose
    gray = Image.fromarray(cell_like(300, 200, 3, 8)[..., 0])
    save("gray.png", gray, gray.convert("RGB"))
    rgba = np.concatenate([cell_like(600, 450, 4, 16), np.full((450, 600, 1), 90, np.uint8)], axis=2)
    save("rgba.png", Image.fromarray(rgba), Image.fromarray(rgba[..., :3]))
    eight = cell_like(320, 240, 5, 8)[..., 1]
    deep = Image.fromarray(eight.astype(np.uint16) * 257)  # 16-bit: v8 * 257 reads back as v8
    assert deep.mode.startswith("I;16")
    save("deep.png", deep, Image.fromarray(eight).convert("RGB"))
    return originals


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("views")
    originals = write_originals(tmp / "data")
    manifest = prepare_dataset("folder", tmp / "data", cache_dir=tmp / "cache")
    names = [Path(p).name for p in manifest.frame["path"]]
    return manifest, [originals[name] for name in names], tmp / "cache"


def pixels(image: Image.Image) -> torch.Tensor:
    return TF.pil_to_tensor(image).float()


def test_evaluation_view_is_torchvisions_resize_and_center_crop(dataset):
    manifest, originals, cache_dir = dataset
    cache = open_eval_cache(manifest, INPUT, cache_dir)
    for i, original in enumerate(originals):
        expected = pixels(TF.center_crop(TF.resize(original, INPUT, BICUBIC), INPUT))
        difference = (cache.batch([i])[0].float() - expected).abs().mean().item()
        if manifest.image_path(i).suffix == ".jpg":
            assert difference < 0.5  # decoded at half scale, still twice the pixels needed
        else:
            assert difference == 0.0, manifest.image_path(i).name


def resized_crop(original: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
    """torchvision's resized_crop of the original (bicubic, to INPUT x INPUT) at box = (left, top, right,
    bottom) in the original's pixels, whole or not: the whole pixels that hold the box are cropped, then
    exactly the box is resized (PIL's resize with a box), so that a fractional box is not rounded."""
    x0, y0, x1, y1 = box
    whole = (math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1))
    within = (x0 - whole[0], y0 - whole[1], x1 - whole[0], y1 - whole[1])
    return original.crop(whole).resize((INPUT, INPUT), Image.Resampling.BICUBIC, box=within)


def test_reference_is_torchvisions_resized_crop_for_whole_pixels(dataset):
    _, originals, _ = dataset
    for original in originals:
        left, top, right, bottom = (
            original.width // 5,
            original.height // 7,
            original.width - 3,
            original.height // 2,
        )
        expected = TF.resized_crop(original, top, left, bottom - top, right - left, [INPUT, INPUT], BICUBIC)
        assert np.array_equal(
            np.asarray(resized_crop(original, (left, top, right, bottom))), np.asarray(expected)
        )


def _torchvision_crops(original: Image.Image, view_size, boxes, flips, shift: int = 0) -> torch.Tensor:
    """torchvision's resized_crop of the original at each box of the stored view, mapped to the original's
    pixels (`shift` moves the boxes by that many view pixels, to show that misplaced crops are caught)."""
    height, width = view_size
    sy, sx = original.height / height, original.width / width
    crops = []
    for (top, left, crop_h, crop_w), flip in zip(boxes.tolist(), flips.tolist(), strict=True):
        top, left = top + shift, left + shift
        crop = resized_crop(original, (left * sx, top * sy, (left + crop_w) * sx, (top + crop_h) * sy))
        crops.append(pixels(TF.hflip(crop) if flip else crop))
    return torch.stack(crops)


@pytest.mark.parametrize("device", DEVICES)
def test_training_view_is_torchvisions_resized_crop_of_the_original(dataset, device):
    manifest, originals, cache_dir = dataset
    cache = open_image_cache(manifest, SIDE, cache_dir)
    rows = np.repeat(np.arange(len(manifest)), CROPS)
    images = cache.batch(rows)
    generator = torch.Generator(device=device).manual_seed(7)
    out = train_transform(images, INPUT, (0, 0, 0), (1, 1, 1), generator, device=device) * 255
    assert out.device.type == device and out.shape == (len(rows), 3, INPUT, INPUT)
    replay = torch.Generator(device=device).manual_seed(7)
    sizes = torch.tensor([tuple(x.shape[-2:]) for x in images])
    boxes = random_resized_crop_boxes(sizes, replay)
    flips = (torch.rand(len(rows), generator=replay, device=device) < 0.5).cpu()
    assert 0 < flips.sum() < len(rows)
    for i, original in enumerate(originals):
        name, view_size = manifest.image_path(i).name, tuple(cache.image(i).shape[-2:])
        assert min(view_size) == min(SIDE, original.width, original.height), name
        assert abs(view_size[1] / view_size[0] - original.width / original.height) < 0.01, name
        mine = out[i * CROPS : (i + 1) * CROPS].cpu()
        picked = slice(i * CROPS, (i + 1) * CROPS)
        expected = _torchvision_crops(original, view_size, boxes[picked], flips[picked])
        per_crop = (mine - expected).abs().mean(dim=(1, 2, 3))
        assert per_crop.mean() < 1.0 and per_crop.max() < 2.0, (name, per_crop)
        if name == "mlcc.jpg":
            shifted = _torchvision_crops(original, view_size, boxes[picked], flips[picked], shift=1)
            assert (mine - shifted).abs().mean() > 2.0  # one view pixel off is well outside the tolerance
