"""The decoded-image cache holds what a direct decode gives, and is built once, atomically, by one process."""

from __future__ import annotations

import multiprocessing
import pickle

import numpy as np
import pytest
import torch
from data_layouts import make_folder, make_mlcc, make_sipakmed
from PIL import Image

from cytotune.data import cache as cache_module
from cytotune.data import (
    eval_cache_path,
    image_cache_path,
    open_eval_cache,
    open_eval_images,
    open_image_cache,
    prepare_dataset,
)
from cytotune.data.images import load_resized
from cytotune.data.transforms import eval_resize, eval_transform
from cytotune.errors import CytotuneError

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CYTOTUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def plain_pil(path, size: int) -> np.ndarray:
    """Shorter side to `size` (bicubic), center crop, with nothing but PIL."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        w, h = image.size
        scale = size / min(w, h)
        image = image.resize(
            (max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC
        )
        left, top = round((image.width - size) / 2), round((image.height - size) / 2)
        return np.asarray(image.crop((left, top, left + size, top + size)))


def test_cache_equals_a_direct_decode(tmp_path):
    manifest = prepare_dataset("sipakmed", make_sipakmed(tmp_path / "sipakmed", per_class=4))
    cache = open_image_cache(manifest, size=24)
    assert cache.build_seconds is not None and len(cache) == len(manifest) == 20
    assert cache.path == image_cache_path(manifest, 24) and manifest.digest[:16] in cache.path.name
    for i in range(len(manifest)):
        expected = plain_pil(manifest.image_path(i), 24)
        assert np.array_equal(cache.images[i], expected)
        assert np.array_equal(load_resized(manifest.image_path(i), 24), expected)
    rows = [7, 0, 19, 7]
    batch = cache.batch(rows)
    assert batch.dtype == torch.uint8 and batch.shape == (4, 3, 24, 24)
    assert batch.is_contiguous(memory_format=torch.channels_last)
    for j, i in enumerate(rows):
        assert torch.equal(batch[j], torch.from_numpy(np.array(cache.images[i])).permute(2, 0, 1))
    assert torch.equal(cache.batch(torch.tensor(rows)), batch)


def test_jpeg_cache_is_close_to_a_full_decode(tmp_path):
    manifest = prepare_dataset("mlcc", make_mlcc(tmp_path / "mlcc", per_class=2))
    cache = open_image_cache(manifest, size=16)
    for i in range(len(manifest)):
        assert np.array_equal(cache.images[i], load_resized(manifest.image_path(i), 16))
        difference = np.abs(cache.images[i].astype(int) - plain_pil(manifest.image_path(i), 16)).mean()
        assert difference < 12  # JPEG draft decoding at a reduced scale, then the same resize


def test_cache_is_reused_and_keyed_by_size(tmp_path):
    manifest = prepare_dataset("folder", make_folder(tmp_path / "data", {"a": 3, "b": 3}))
    first = open_image_cache(manifest, 16)
    again = open_image_cache(manifest, 16)
    assert again.build_seconds is None and again.path == first.path
    other = open_image_cache(manifest, 20)
    assert other.path != first.path and other.images.shape == (6, 20, 20, 3)
    assert sorted(p.name for p in first.path.parent.iterdir() if p.suffix == ".u8") == sorted(
        [first.path.name, other.path.name]
    )


def test_cache_pickles_as_its_path(tmp_path):
    manifest = prepare_dataset("folder", make_folder(tmp_path / "data", {"a": 3, "b": 3}))
    cache = open_image_cache(manifest, 32)
    payload = pickle.dumps(cache)
    assert len(payload) < 1000
    assert torch.equal(pickle.loads(payload).batch([0, 5]), cache.batch([0, 5]))


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
    queue.put((cache.build_seconds is not None, cache.batch(np.arange(len(cache))).numpy()))


def test_concurrent_processes_build_once_and_read_whole_files(tmp_path):
    manifest = prepare_dataset("folder", make_folder(tmp_path / "data", {"a": 12, "b": 12}))
    results = _in_three_processes(_open_in_child, manifest, 48, tmp_path / "shared")
    assert sum(built for built, _ in results) == 1
    expected = np.stack([load_resized(manifest.image_path(i), 48) for i in range(len(manifest))]).transpose(
        0, 3, 1, 2
    )
    for _, images in results:
        assert np.array_equal(images, expected)
    leftovers = [
        p.name for p in (tmp_path / "shared" / "images").iterdir() if p.suffix not in (".u8", ".lock")
    ]
    assert leftovers == []


def test_a_failed_build_leaves_no_cache_file(tmp_path):
    root = make_folder(tmp_path / "data", {"a": 3, "b": 3})
    manifest = prepare_dataset("folder", root)
    (root / "b" / "img_1.png").write_bytes(b"broken after prepare")
    with pytest.raises(CytotuneError, match=r"cannot decode .*img_1.png while building the image cache"):
        open_image_cache(manifest, 16)
    assert [
        p.name for p in image_cache_path(manifest, 16).parent.iterdir() if not p.name.endswith(".lock")
    ] == []


def test_eval_cache_gives_the_same_eval_batches_as_resizing_each_batch(tmp_path):
    manifest = prepare_dataset("sipakmed", make_sipakmed(tmp_path / "sipakmed", per_class=4))
    cache = open_image_cache(manifest, size=32)
    eval_cache = open_eval_cache(manifest, 24, size=32)
    assert eval_cache.build_seconds is not None and eval_cache.path == eval_cache_path(manifest, 24, 32)
    assert eval_cache.path != cache.path and eval_cache.images.shape == (len(manifest), 24, 24, 3)
    everything = np.arange(len(manifest))
    for rows in ([7, 0, 19, 7], everything, everything[::-1]):
        expected = eval_transform(cache.batch(rows), 24, MEAN, STD)
        assert torch.equal(eval_transform(eval_cache.batch(rows), 24, MEAN, STD), expected)
    assert torch.equal(eval_cache.batch(everything), eval_resize(cache.batch(everything), 24))


def test_eval_cache_is_reused_and_is_the_image_cache_at_its_own_size(tmp_path):
    manifest = prepare_dataset("folder", make_folder(tmp_path / "data", {"a": 3, "b": 3}))
    first = open_eval_cache(manifest, 16, size=20)
    again = open_eval_cache(manifest, 16, size=20)
    assert again.build_seconds is None and again.path == first.path
    assert np.array_equal(again.images, first.images)
    same = open_eval_cache(manifest, 20, size=20)
    assert same.path == image_cache_path(manifest, 20) and same.images.shape == (6, 20, 20, 3)
    assert open_eval_images(manifest, 16, 20, None, "cpu").path == first.path
    assert open_eval_images(manifest, 16, 20, None, "meta").path == image_cache_path(manifest, 20)


def _open_eval_in_child(manifest, cache_dir, queue):
    cache = open_eval_cache(manifest, 24, 48, cache_dir)
    queue.put((cache.build_seconds is not None, cache.batch(np.arange(len(cache))).numpy()))


def test_concurrent_processes_build_the_eval_cache_once_and_atomically(tmp_path):
    manifest = prepare_dataset("folder", make_folder(tmp_path / "data", {"a": 12, "b": 12}))
    results = _in_three_processes(_open_eval_in_child, manifest, tmp_path / "shared")
    assert sum(built for built, _ in results) == 1
    source = open_image_cache(manifest, 48, tmp_path / "shared")
    expected = eval_resize(source.batch(np.arange(len(manifest))), 24).numpy()
    for _, images in results:
        assert np.array_equal(images, expected)
    names = sorted(p.name for p in (tmp_path / "shared" / "images").iterdir())
    assert [name for name in names if name.endswith(".u8")] == sorted(
        [source.path.name, eval_cache_path(manifest, 24, 48, tmp_path / "shared").name]
    )
    assert all(name.endswith((".u8", ".lock")) for name in names)


def test_a_failed_eval_cache_build_leaves_no_file(tmp_path, monkeypatch):
    manifest = prepare_dataset("folder", make_folder(tmp_path / "data", {"a": 3, "b": 3}))
    source = open_image_cache(manifest, 20)

    def broken(x, input_size):
        raise RuntimeError("resize failed")

    monkeypatch.setattr(cache_module, "eval_resize", broken)
    with pytest.raises(RuntimeError, match="resize failed"):
        open_eval_cache(manifest, 16, size=20)
    assert [p.name for p in source.path.parent.iterdir() if not p.name.endswith(".lock")] == [
        source.path.name
    ]
