"""The synthetic generator: deterministic, fast, and classes that differ but overlap."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cytotune.data.synthetic import generate_synthetic
from cytotune.errors import CytotuneError


def load_class(root, name) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted((root / name).glob("*.png"))])


def test_layout_marker_and_determinism(tmp_path):
    a = generate_synthetic(tmp_path / "a", classes=3, per_class=4, size=32, seed=5)
    b = generate_synthetic(tmp_path / "b", classes=3, per_class=4, size=32, seed=5)
    c = generate_synthetic(tmp_path / "c", classes=3, per_class=4, size=32, seed=6)
    assert sorted(p.name for p in a.iterdir()) == ["class_0", "class_1", "class_2", "cytotune_synthetic.json"]
    assert json.loads((a / "cytotune_synthetic.json").read_text())["classes"] == [
        "class_0",
        "class_1",
        "class_2",
    ]
    first = load_class(a, "class_1")
    assert first.shape == (4, 32, 32, 3) and first.dtype == np.uint8
    assert np.array_equal(first, load_class(b, "class_1"))
    assert not np.array_equal(first, load_class(c, "class_1"))
    assert len({img.tobytes() for img in first}) == 4


def test_many_classes_sort_in_label_order(tmp_path):
    root = generate_synthetic(tmp_path / "s", classes=12, per_class=1, size=16)
    names = json.loads((root / "cytotune_synthetic.json").read_text())["classes"]
    assert names == sorted(names) and names[0] == "class_00" and names[-1] == "class_11"


def test_classes_differ_in_nucleus_but_overlap(tmp_path):
    """Nucleus area (dark pixels) grows with the class on average, while neighbouring classes overlap."""
    root = generate_synthetic(tmp_path / "s", classes=4, per_class=30, size=64, seed=1)
    areas = []
    for label in range(4):
        pixels = load_class(root, f"class_{label}").astype(float)
        areas.append((pixels.sum(axis=-1) < 420).mean(axis=(1, 2)))
    means = [a.mean() for a in areas]
    assert means == sorted(means) and means[-1] > 2 * means[0]
    for lower, upper in zip(areas, areas[1:], strict=False):
        assert upper.min() < lower.max()  # not separable by nucleus size alone


def test_bad_arguments(tmp_path):
    with pytest.raises(CytotuneError, match="classes >= 2"):
        generate_synthetic(tmp_path / "s", classes=1)
    with pytest.raises(CytotuneError, match="png or jpg"):
        generate_synthetic(tmp_path / "s", image_format="gif")
