"""The decoded-image caches hold what a direct decode gives, built once, atomically, by one process."""

from __future__ import annotations

import multiprocessing
import pickle

import numpy as np
import pytest
import torch
from data_layouts import make_folder, make_mlcc, make_sipakmed, write_image
from PIL import Image

from cytotune.data import cache as cache_module
from cytotune.data import (
    eval_cache_path,
    image_cache_path,
    open_eval_cache,
    open_image_cache,
    prepare_dataset,
)
from cytotune.data.images import load_eval_view, load_train_view
from cytotune.errors import CytotuneError

pytestmark = pytest.mark.usefixtures("isolated_cache")


def plain_pil(path, size: tuple[int, int]) -> np.ndarray:
    """The whole image resized to size = (width, height) (bicubic), with nothing but PIL."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize(size, Image.Resampling.BICUBIC))


def mixed_sizes(root, sizes=((40, 30), (64, 48), (30, 50), (20, 12), (33, 33), (90, 20))):
    """A folder dataset of PNG images of the given (width, height) sizes, two classes."""
    for i, size in enumerate(sizes):
        write_image(root / "ab"[i % 2] / f"img_{i}.png", seed=i, size=size)
    return root


def test_training_view_keeps_each_aspect_ratio_and_equals_a_direct_decode(tmp_path):
    manifest = prepare_dataset("folder", mixed_sizes(tmp_path / "data"))
    cache = open_image_cache(manifest, size=24)
    assert cache.build_seconds is not None and len(cache) == len(manifest) == 6
    assert cache.path == image_cache_path(manifest, 24) and manifest.digest[:16] in cache.path.name
    expected_sizes = {
        "img_0.png": (32, 24),  # 40x30: shorter side 30 -> 24, longer int(24 * 40 / 30) = 32
        "img_1.png": (32, 24),  # 64x48
        "img_2.png": (24, 40),  # 30x50: int(24 * 50 / 30) = 40
        "img_3.png": (20, 12),  # smaller than 24: kept, never enlarged
        "img_4.png": (24, 24),
        "img_5.png": (90, 20),  # shorter side 20 <= 24: kept
    }
    for i in range(len(manifest)):
        path = manifest.image_path(i)
        width, height = expected_sizes[path.name]
        image = cache.image(i)
        assert image.dtype == torch.uint8 and tuple(image.shape) == (3, height, width)
        expected = plain_pil(path, (width, height))
        assert np.array_equal(image.permute(1, 2, 0).numpy(), expected)
        assert np.array_equal(load_train_view(path, 24), expected)
    rows = [5, 0, 3, 5]
    batch = cache.batch(rows)
    assert [tuple(x.shape) for x in batch] == [tuple(cache.image(i).shape) for i in rows]
    assert all(torch.equal(x, cache.image(i)) for x, i in zip(batch, rows, strict=True))
    assert all(torch.equal(x, y) for x, y in zip(cache.batch(torch.tensor(rows)), batch, strict=True))


def test_small_jpegs_are_decoded_in_full(tmp_path):
    """A JPEG decodes at a reduced scale only when that keeps twice the pixels asked for per side: not for
    64x48 images shrunk to 21x16 (see test_data_views for 2048x1536 JPEGs)."""
    manifest = prepare_dataset("mlcc", make_mlcc(tmp_path / "mlcc", per_class=2))
    train = open_image_cache(manifest, size=16)
    evaluation = open_eval_cache(manifest, 16)
    for i in range(len(manifest)):
        expected = plain_pil(manifest.image_path(i), (21, 16))  # 64x48 -> 21x16
        assert np.array_equal(train.image(i).permute(1, 2, 0).numpy(), expected)
        assert np.array_equal(evaluation.images[i], expected[:, 2:18])


def test_cache_is_reused_and_keyed_by_side_and_layout(tmp_path):
    manifest = prepare_dataset("folder", make_folder(tmp_path / "data", {"a": 3, "b": 3}))
    first = open_image_cache(manifest, 16)
    again = open_image_cache(manifest, 16)
    assert again.build_seconds is None and again.path == first.path
    other = open_image_cache(manifest, 20)
    assert other.path != first.path and tuple(other.image(0).shape) == (3, 20, 26)
    assert sorted(p.name for p in first.path.parent.iterdir() if p.suffix == ".u8") == sorted(
        [first.path.name, other.path.name]
    )
    assert f"-train16-v{cache_module.CACHE_LAYOUT}.u8" in first.path.name


def test_a_cache_of_another_layout_is_never_read(tmp_path, monkeypatch):
    manifest = prepare_dataset("folder", make_folder(tmp_path / "data", {"a": 3, "b": 3}))
    images = tmp_path / "cache" / "images"
    images.mkdir(parents=True)
    # layout 1: a (6, 16, 16, 3) centre square per image, named without a layout
    old = images / f"folder-{manifest.digest[:16]}-16.u8"
    old.write_bytes(bytes(6 * 16 * 16 * 3))
    built = open_image_cache(manifest, 16)
    assert built.build_seconds is not None and built.path != old
    # a file under the new name that does not hold this layout's byte count is rebuilt, not read
    built.path.write_bytes(bytes(6 * 16 * 16 * 3))
    rebuilt = open_image_cache(manifest, 16)
    assert rebuilt.build_seconds is not None
    assert np.array_equal(
        rebuilt.image(0).permute(1, 2, 0).numpy(), load_train_view(manifest.image_path(0), 16)
    )
    before = (image_cache_path(manifest, 16), eval_cache_path(manifest, 16))
    monkeypatch.setattr(cache_module, "CACHE_LAYOUT", cache_module.CACHE_LAYOUT + 1)
    assert image_cache_path(manifest, 16) != before[0] and eval_cache_path(manifest, 16) != before[1]


def test_caches_pickle_as_their_path(tmp_path):
    manifest = prepare_dataset("folder", make_folder(tmp_path / "data", {"a": 3, "b": 3}))
    for cache in (open_image_cache(manifest, 32), open_eval_cache(manifest, 24)):
        payload = pickle.dumps(cache)
        assert len(payload) < 1000
        for x, y in zip(pickle.loads(payload).batch([0, 5]), cache.batch([0, 5]), strict=True):
            assert torch.equal(x, y)


def _in_three_processes(target, *args) -> list:
    """Run target(*args, queue) in three forked processes at once; what each put on the queue."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    children = [context.Process(target=target, args=(*args, queue)) for _ in range(3)]
    for child in children:
        child.start()
    results = [queue.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    return results


def _open_in_child(manifest, size, cache_dir, queue):
    cache = open_image_cache(manifest, size, cache_dir, workers=1)
    queue.put((cache.build_seconds is not None, [x.numpy().copy() for x in cache.batch(range(len(cache)))]))


def test_concurrent_processes_build_once_and_read_whole_files(tmp_path):
    manifest = prepare_dataset("folder", mixed_sizes(tmp_path / "data"))
    results = _in_three_processes(_open_in_child, manifest, 24, tmp_path / "shared")
    assert sum(built for built, _ in results) == 1
    expected = [load_train_view(manifest.image_path(i), 24).transpose(2, 0, 1) for i in range(len(manifest))]
    for _, images in results:
        assert all(np.array_equal(x, y) for x, y in zip(images, expected, strict=True))
    leftovers = [
        p.name for p in (tmp_path / "shared" / "images").iterdir() if p.suffix not in (".u8", ".lock")
    ]
    assert leftovers == []


def test_a_failed_build_leaves_no_cache_file(tmp_path):
    root = make_folder(tmp_path / "data", {"a": 3, "b": 3})
    manifest = prepare_dataset("folder", root)
    (root / "b" / "img_1.png").write_bytes(b"broken after prepare")
    for build in (open_image_cache, open_eval_cache):
        with pytest.raises(CytotuneError, match=r"cannot decode .*img_1.png while building the image cache"):
            build(manifest, 16)
    assert [
        p.name for p in image_cache_path(manifest, 16).parent.iterdir() if not p.name.endswith(".lock")
    ] == []


def test_eval_cache_holds_the_evaluation_view_of_each_original(tmp_path):
    manifest = prepare_dataset("sipakmed", make_sipakmed(tmp_path / "sipakmed", per_class=4))
    eval_cache = open_eval_cache(manifest, 24)
    assert eval_cache.build_seconds is not None and eval_cache.path == eval_cache_path(manifest, 24)
    assert eval_cache.images.shape == (len(manifest), 24, 24, 3)
    for i in range(len(manifest)):
        expected = plain_pil(manifest.image_path(i), (32, 24))[:, 4:28]  # 40x30 -> 32x24, centre square
        assert np.array_equal(eval_cache.images[i], expected)
        assert np.array_equal(load_eval_view(manifest.image_path(i), 24), expected)
    rows = [7, 0, 19, 7]
    batch = eval_cache.batch(rows)
    assert batch.dtype == torch.uint8 and batch.shape == (4, 3, 24, 24)
    assert batch.is_contiguous(memory_format=torch.channels_last)
    for j, i in enumerate(rows):
        assert torch.equal(batch[j], torch.from_numpy(np.array(eval_cache.images[i])).permute(2, 0, 1))


def test_eval_cache_is_reused_and_keyed_by_input_size(tmp_path):
    manifest = prepare_dataset("folder", make_folder(tmp_path / "data", {"a": 3, "b": 3}))
    first = open_eval_cache(manifest, 16)
    again = open_eval_cache(manifest, 16)
    assert again.build_seconds is None and again.path == first.path
    assert np.array_equal(again.images, first.images)
    other = open_eval_cache(manifest, 20)
    assert other.path != first.path and other.images.shape == (6, 20, 20, 3)
    assert f"-eval16-v{cache_module.CACHE_LAYOUT}.u8" in first.path.name
    with pytest.raises(CytotuneError, match="evaluation input size 4 is invalid"):
        open_eval_cache(manifest, 4)


def _open_eval_in_child(manifest, cache_dir, queue):
    cache = open_eval_cache(manifest, 24, cache_dir, workers=1)
    queue.put((cache.build_seconds is not None, cache.batch(np.arange(len(cache))).numpy()))


def test_concurrent_processes_build_the_eval_cache_once_and_atomically(tmp_path):
    manifest = prepare_dataset("folder", make_folder(tmp_path / "data", {"a": 12, "b": 12}))
    results = _in_three_processes(_open_eval_in_child, manifest, tmp_path / "shared")
    assert sum(built for built, _ in results) == 1
    expected = np.stack([load_eval_view(manifest.image_path(i), 24) for i in range(len(manifest))])
    for _, images in results:
        assert np.array_equal(images, expected.transpose(0, 3, 1, 2))
    names = sorted(p.name for p in (tmp_path / "shared" / "images").iterdir())
    assert [name for name in names if name.endswith(".u8")] == [
        eval_cache_path(manifest, 24, tmp_path / "shared").name
    ]
    assert all(name.endswith((".u8", ".lock")) for name in names)


def test_a_failed_eval_cache_build_leaves_no_file(tmp_path, monkeypatch):
    manifest = prepare_dataset("folder", make_folder(tmp_path / "data", {"a": 3, "b": 3}))

    def broken(path, input_size):
        raise RuntimeError("resize failed")

    monkeypatch.setattr(cache_module, "load_eval_view", broken)
    with pytest.raises(RuntimeError, match="resize failed"):
        open_eval_cache(manifest, 16)
    assert [
        p.name for p in eval_cache_path(manifest, 16).parent.iterdir() if not p.name.endswith(".lock")
    ] == []
