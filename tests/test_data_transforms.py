"""Batch transforms on uint8 tensors: eval resize + normalise, seeded random resized crop + flip."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms import functional as TF

from cytotune.data.transforms import eval_resize, eval_transform, random_resized_crop_boxes, train_transform

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def images(batch=6, height=40, width=40, seed=0) -> torch.Tensor:
    return torch.randint(
        0, 256, (batch, 3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def test_eval_transform_normalises_and_resizes():
    x = torch.full((2, 3, 32, 32), 200, dtype=torch.uint8)
    out = eval_transform(x, 24, MEAN, STD)
    assert out.shape == (2, 3, 24, 24) and out.dtype == torch.float32
    expected = (200 / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(out.mean(dim=(0, 2, 3)), expected, atol=1e-4)
    same_size = eval_transform(images(), 40, MEAN, STD)
    direct = (images().float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(
        1, 3, 1, 1
    )
    assert torch.allclose(same_size, direct, atol=1e-6)


@pytest.mark.parametrize("height, width", [(48, 64), (143, 97), (150, 201), (30, 30)])
def test_eval_resize_is_torchvisions_resize_and_center_crop(height, width):
    x = images(2, height, width)
    expected = TF.center_crop(TF.resize(x, 24, InterpolationMode.BICUBIC, antialias=True), 24)
    out = eval_resize(x, 24)
    assert out.shape == expected.shape == (2, 3, 24, 24)
    assert (out.float() - expected.float()).abs().mean() < 1.0


def test_eval_transform_rejects_float_input():
    with pytest.raises(TypeError, match="uint8"):
        eval_transform(torch.zeros(1, 3, 8, 8), 8, MEAN, STD)


def test_train_transform_is_seeded():
    x = images()
    a = train_transform(x, 24, MEAN, STD, torch.Generator().manual_seed(3))
    b = train_transform(x, 24, MEAN, STD, torch.Generator().manual_seed(3))
    c = train_transform(x, 24, MEAN, STD, torch.Generator().manual_seed(4))
    assert a.shape == (6, 3, 24, 24) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_crop_boxes_follow_scale_and_ratio():
    boxes = random_resized_crop_boxes(torch.tensor([[60, 80]] * 2000), torch.Generator().manual_seed(0))
    top, left, height, width = boxes.T
    assert (
        (top >= 0).all() and (left >= 0).all() and (top + height <= 60).all() and (left + width <= 80).all()
    )
    area = (height * width).double() / (60 * 80)
    assert area.min() > 0.05 and area.max() <= 1.0
    ratio = width.double() / height.double()
    assert ratio.min() > 0.7 and ratio.max() < 1.45
    torch.manual_seed(0)
    reference = [
        RandomResizedCrop.get_params(torch.zeros(3, 60, 80), (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(2000)
    ]
    reference_area = sum(h * w for _, _, h, w in reference) / (2000 * 60 * 80)
    assert math.isclose(area.mean().item(), reference_area, abs_tol=0.03)  # as torchvision draws them


def test_crop_boxes_follow_each_images_own_size():
    sizes = torch.tensor([[1536, 2048], [143, 97], [256, 341], [40, 40]] * 250)
    boxes = random_resized_crop_boxes(sizes, torch.Generator().manual_seed(1))
    top, left, height, width = boxes.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + height <= sizes[:, 0]).all() and (left + width <= sizes[:, 1]).all()
    area = (height * width).double() / sizes.prod(dim=1).double()
    torch.manual_seed(0)
    for k, (h, w) in enumerate(sizes[:4].tolist()):
        blank = torch.empty(3, h, w)
        reference = [RandomResizedCrop.get_params(blank, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(1000)]
        reference_area = sum(bh * bw for _, _, bh, bw in reference) / (1000 * h * w)
        assert math.isclose(area[k::4].mean().item(), reference_area, abs_tol=0.04)  # each at its own size
    assert (height[0::4] > 300).float().mean() > 0.9  # boxes of the large image are large, not 143 px


@pytest.mark.parametrize("height, width", [(200, 10), (10, 200)])
def test_crop_boxes_fall_back_to_torchvisions_center_crop(height, width):
    """No try fits an image this narrow: torchvision's fallback (a center crop clamped to the ratio)."""
    box = random_resized_crop_boxes(torch.tensor([[height, width]]), torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    expected = RandomResizedCrop.get_params(torch.zeros(3, height, width), (0.08, 1.0), (3 / 4, 4 / 3))
    assert box[0].tolist() == list(expected)


def test_train_transform_takes_images_of_different_sizes():
    mixed = [images(1, 50, 70, seed=1)[0], images(1, 143, 97, seed=2)[0], images(1, 20, 20, seed=3)[0]]
    threads = torch.get_num_threads()
    out = train_transform(mixed, 24, MEAN, STD, torch.Generator().manual_seed(5))
    assert out.shape == (3, 3, 24, 24) and out.dtype == torch.float32
    assert torch.get_num_threads() == threads  # one thread while resizing crop by crop, then restored
    again = train_transform(mixed, 24, MEAN, STD, torch.Generator().manual_seed(5))
    assert torch.equal(out, again)
    with pytest.raises(TypeError, match="uint8"):
        train_transform([mixed[0].float()], 24, MEAN, STD, torch.Generator())


def test_train_transform_flips_about_half():
    x = torch.zeros(400, 3, 8, 8, dtype=torch.uint8)
    x[..., :4] = 255  # left half white
    out = train_transform(
        x, 8, (0, 0, 0), (1, 1, 1), torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0)
    )
    flipped = (out[:, 0, 4, 0] < 0.5).float().mean().item()
    assert 0.4 < flipped < 0.6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_transforms_run_on_cuda():
    x = images().cuda()
    generator = torch.Generator(device="cuda").manual_seed(0)
    out = train_transform(x, 24, MEAN, STD, generator)
    assert out.is_cuda and out.shape == (6, 3, 24, 24)
    assert torch.allclose(
        eval_transform(x, 24, MEAN, STD).cpu(), eval_transform(x.cpu(), 24, MEAN, STD), atol=0.1
    )
