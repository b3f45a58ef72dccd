"""Each published layout, built on the fly, gives the right manifest; bad input fails with one clear line."""

from __future__ import annotations

import json
import logging
import re
import shutil

import numpy as np
import pytest
from data_layouts import (
    MLCC_LONG,
    SIPAKMED,
    make_bcfc,
    make_folder,
    make_hicervix,
    make_mlcc,
    make_sipakmed,
    write_image,
)

from cytotune.data import find_manifest, list_datasets, prepare_dataset
from cytotune.data import manifest as manifest_module
from cytotune.errors import CytotuneError

pytestmark = pytest.mark.usefixtures("isolated_cache")


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_registry_lists_every_dataset():
    assert list_datasets() == ["bcfc", "folder", "hicervix", "mlcc", "sipakmed", "synthetic"]


def test_sipakmed_published_layout(tmp_path):
    root = make_sipakmed(tmp_path / "sipakmed", per_class=10)
    manifest = prepare_dataset("sipakmed", root)
    assert manifest.classes == SIPAKMED
    frame = manifest.frame
    assert list(frame.columns) == ["path", "class_name", "label", "split", "sha1"]
    assert len(frame) == 50  # the full-slide 001.bmp beside CROPPED/ is not a cell crop
    assert frame["path"].str.match(r"im_[A-Za-z-]+/CROPPED/\d{3}_0\d\.bmp$").all()
    assert (frame["label"] == frame["class_name"].map(SIPAKMED.index)).all()
    assert manifest.counts()[["train", "val", "test"]].to_dict("list") == {
        "train": [7] * 5,
        "val": [1] * 5,
        "test": [2] * 5,
    }
    assert frame["sha1"].str.fullmatch(r"[0-9a-f]{40}").all()


def test_sipakmed_flat_and_wrapped_layouts_match(tmp_path):
    flat = prepare_dataset("sipakmed", make_sipakmed(tmp_path / "flat", per_class=4, published=False))
    assert flat.classes == SIPAKMED and len(flat) == 20
    assert flat.frame["path"].str.match(r"[A-Za-z-]+/\d{3}_0\d\.bmp$").all()
    wrapped_root = tmp_path / "download"
    make_sipakmed(wrapped_root / "SIPaKMeD", per_class=4)
    wrapped = prepare_dataset("sipakmed", wrapped_root)
    assert wrapped.frame["path"].str.startswith("SIPaKMeD/im_").all() and len(wrapped) == 20


@pytest.mark.parametrize("long_names", [True, False])
def test_mlcc_long_and_short_names_give_the_fixed_class_order(tmp_path, long_names):
    manifest = prepare_dataset("mlcc", make_mlcc(tmp_path / "mlcc", per_class=5, long_names=long_names))
    assert manifest.classes == ("NILM", "LSIL", "HSIL", "SCC")
    folder = manifest.frame["path"].str.split("/").str[0]
    expected = [MLCC_LONG[c] if long_names else c for c in manifest.frame["class_name"]]
    assert list(folder) == expected
    assert manifest.frame["path"].str.endswith(".jpg").all()


def test_bcfc_layout(tmp_path):
    manifest = prepare_dataset("bcfc", make_bcfc(tmp_path / "bcfc", per_class=10))
    assert manifest.classes == ("benign", "malignant")
    assert manifest.counts()["total"].tolist() == [10, 10]


def test_folder_and_synthetic_layouts(tmp_path):
    from cytotune.data.synthetic import generate_synthetic

    manifest = prepare_dataset("folder", make_folder(tmp_path / "user", {"zeta": 5, "alpha": 6}))
    assert manifest.classes == ("alpha", "zeta")
    synthetic = generate_synthetic(tmp_path / "syn", classes=3, per_class=5, size=24)
    assert prepare_dataset("synthetic", synthetic).classes == ("class_0", "class_1", "class_2")
    assert prepare_dataset("folder", synthetic).classes == ("class_0", "class_1", "class_2")


def test_hicervix_levels_and_official_split(tmp_path):
    root = make_hicervix(tmp_path / "hicervix")
    level3 = prepare_dataset("hicervix", root, level=3)
    # level 3 = level_3, else level_2; NILM rows (neither) are dropped
    assert level3.classes == ("ASC-H", "ASC-US", "HSIL-2", "HSIL-3", "LSIL-koilo")
    assert level3.split is None
    splits = level3.frame["split"]
    assert (level3.frame["path"].str.split("/").str[0] == splits).all()  # official split kept
    assert splits.value_counts().to_dict() == {"train": 15, "test": 10, "val": 5}
    level2 = prepare_dataset("hicervix", root, level=2)
    assert level2.classes == ("ASC-H", "ASC-US", "HSIL", "LSIL")
    level1 = prepare_dataset("hicervix", root, level=1)
    assert level1.classes == ("ASC", "NILM", "SIL") and len(level1) == 36
    assert len({level1.digest, level2.digest, level3.digest}) == 3
    assert len(list((root / ".cytotune").glob("*.csv"))) == 3


def test_hicervix_finds_images_by_name_in_any_folder(tmp_path):
    root = make_hicervix(tmp_path / "hicervix")
    (root / "images").mkdir()
    for split in ("train", "val", "test"):
        for image in (root / split).iterdir():
            shutil.move(image, root / "images" / image.name)
    manifest = prepare_dataset("hicervix", root)
    assert manifest.frame["path"].str.startswith("images/").all()
    assert manifest.frame["split"].value_counts().to_dict() == {"train": 15, "test": 10, "val": 5}


def test_hicervix_missing_image_fails_or_is_skipped(tmp_path):
    root = make_hicervix(tmp_path / "hicervix")
    (root / "val" / "val_001.jpg").unlink()
    with pytest.raises(CytotuneError, match="val.csv:val_001.jpg") as err:
        prepare_dataset("hicervix", root)
    one_line(err)
    assert len(prepare_dataset("hicervix", root, skip_corrupt=True)) == 29


def test_hicervix_bad_csv_names_file_and_columns(tmp_path):
    root = make_hicervix(tmp_path / "hicervix")
    (root / "test.csv").write_text("image_name,label\ntest_000.jpg,x\n")
    with pytest.raises(CytotuneError, match=r"test.csv lacks columns level_1, level_2, level_3") as err:
        prepare_dataset("hicervix", root)
    one_line(err)


def test_split_is_seeded_stratified_and_configurable(tmp_path):
    root = make_folder(tmp_path / "data", {"a": 20, "b": 10})
    first = prepare_dataset("folder", root)
    assert first.counts()[["train", "val", "test"]].values.tolist() == [[14, 2, 4], [7, 1, 2]]
    assert prepare_dataset("folder", root).frame.equals(first.frame)
    other_seed = prepare_dataset("folder", root, split_seed=1)
    assert not other_seed.frame["split"].equals(first.frame["split"])
    assert other_seed.digest != first.digest
    custom = prepare_dataset("folder", root, split=(0.5, 0.25, 0.25))
    assert custom.counts()[["train", "val", "test"]].values.tolist() == [[10, 5, 5], [5, 3, 2]]


def test_manifest_is_written_once_and_reused_until_files_change(tmp_path):
    root = make_folder(tmp_path / "data", {"a": 6, "b": 6})
    first = prepare_dataset("folder", root)
    assert first.path.parent == root / ".cytotune" and first.path.is_file()
    meta = json.loads(first.path.with_suffix(".json").read_text())
    assert (
        meta["classes"] == ["a", "b"]
        and meta["digest"] == first.digest
        and meta["settings"]["split"]
        == [
            0.7,
            0.1,
            0.2,
        ]
    )
    stamp = first.path.stat().st_mtime_ns
    again = prepare_dataset("folder", root)
    assert again.digest == first.digest and first.path.stat().st_mtime_ns == stamp
    assert find_manifest("folder", root).digest == first.digest
    write_image(root / "a" / "img_0.png", seed=424242)
    assert find_manifest("folder", root) is None
    changed = prepare_dataset("folder", root)
    assert changed.digest != first.digest


def test_read_only_data_folder_puts_the_manifest_under_the_cache_dir(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "data", {"a": 4, "b": 4})
    writable = manifest_module.is_writable_dir
    monkeypatch.setattr(manifest_module, "is_writable_dir", lambda p: root not in p.parents and writable(p))
    manifest = prepare_dataset("folder", root, cache_dir=tmp_path / "mycache")
    assert (tmp_path / "mycache" / "manifests") in manifest.path.parents
    assert not (root / ".cytotune").exists()
    assert prepare_dataset("folder", root, cache_dir=tmp_path / "mycache").path == manifest.path


def test_missing_root(tmp_path):
    with pytest.raises(CytotuneError, match=r"does not exist: expected the sipakmed folder") as err:
        prepare_dataset("sipakmed", tmp_path / "nowhere")
    one_line(err)


def test_unknown_dataset_lists_the_known_ones(tmp_path):
    with pytest.raises(
        CytotuneError, match=r"unknown dataset 'sipakmd': expected one of bcfc, folder, hicervix"
    ):
        prepare_dataset("sipakmd", tmp_path)


@pytest.mark.parametrize(
    ("dataset", "expected"),
    [
        ("sipakmed", "expected im_<Class>/CROPPED/*.bmp"),
        ("mlcc", "expected folders NILM, LSIL, HSIL, SCC"),
        ("bcfc", "expected folders benign/ and malignant/"),
        ("hicervix", "expected train.csv, val.csv, test.csv"),
        ("synthetic", "expected cytotune_synthetic.json"),
    ],
)
def test_layout_matching_no_loader_says_expected_and_found(tmp_path, dataset, expected):
    root = make_folder(tmp_path / "data", {"cats": 2, "dogs": 2})
    (root / "notes.txt").write_text("hello")
    with pytest.raises(CytotuneError, match=re.escape(expected)) as err:
        prepare_dataset(dataset, root)
    assert "found cats/, dogs/, notes.txt" in one_line(err)


def test_folder_without_class_folders(tmp_path):
    write_image(tmp_path / "data" / "x.png", seed=1)
    with pytest.raises(CytotuneError, match=r"expected one sub-folder per class with images; found x.png"):
        prepare_dataset("folder", tmp_path / "data")


def test_empty_class_folder(tmp_path):
    root = make_bcfc(tmp_path / "bcfc", per_class=3)
    for image in (root / "malignant").iterdir():
        image.unlink()
    (root / "malignant" / "readme.txt").write_text("x")
    with pytest.raises(
        CytotuneError, match=r"class folder .*malignant is empty: expected malignant images"
    ) as err:
        prepare_dataset("bcfc", root)
    one_line(err)


def test_corrupt_images_are_all_listed_and_leave_no_manifest(tmp_path, caplog):
    root = make_mlcc(tmp_path / "mlcc", per_class=5, long_names=False)
    truncated = root / "LSIL" / "lsil_1.jpg"
    truncated.write_bytes(truncated.read_bytes()[:200])
    (root / "SCC" / "scc_2.jpg").write_bytes(b"not an image at all")
    with pytest.raises(CytotuneError) as err:
        prepare_dataset("mlcc", root)
    message = one_line(err)
    assert message.startswith("2 unreadable or missing images")
    assert "LSIL/lsil_1.jpg" in message and "SCC/scc_2.jpg" in message and "--skip-corrupt" in message
    assert not list(root.glob(".cytotune/*.csv")) and not list(root.glob(".cytotune/*.json"))
    with caplog.at_level(logging.WARNING, logger="cytotune.data"):
        manifest = prepare_dataset("mlcc", root, skip_corrupt=True)
    assert "skipped 2 unreadable or missing images" in caplog.text
    assert len(manifest) == 18 and set(manifest.dropped) == {"LSIL/lsil_1.jpg", "SCC/scc_2.jpg"}
    assert len(prepare_dataset("mlcc", root)) == 18  # the prepared manifest is reused


def test_odd_image_modes_are_accepted(tmp_path):
    from cytotune.data import open_image_cache

    root = tmp_path / "modes"
    for mode, name in (("L", "gray"), ("RGBA", "rgba"), ("P", "palette"), ("I;16", "sixteen")):
        for i in range(3):
            write_image(root / name / f"{name}_{i}.png", seed=31 * i + len(name), mode=mode)
    manifest = prepare_dataset("folder", root)
    assert len(manifest) == 12
    cache = open_image_cache(manifest, 16)
    images = cache.batch(np.arange(12))
    assert [tuple(image.shape) for image in images] == [(3, 16, 21)] * 12  # 40x30 -> 21x16
    gray = [x for x, name in zip(images, manifest.frame["class_name"], strict=True) if name == "gray"]
    assert len(gray) == 3 and all((g[0] == g[1]).all() and (g[1] == g[2]).all() for g in gray)


def test_sixteen_bit_values_are_scaled_not_clipped(tmp_path):
    from PIL import Image

    from cytotune.data.images import load_eval_view, load_train_view

    path = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 12), 32896, dtype=np.uint16)).save(path)  # 128 * 257
    assert load_train_view(path, 8).shape == (8, 12, 3) and (load_train_view(path, 8) == 128).all()
    assert (load_eval_view(path, 8) == 128).all()


def test_the_same_image_in_two_splits_names_both_paths(tmp_path):
    root = make_hicervix(tmp_path / "hicervix")
    shutil.copy(root / "train" / "train_004.jpg", root / "test" / "test_004.jpg")
    with pytest.raises(CytotuneError, match=r"same image is in two splits") as err:
        prepare_dataset("hicervix", root)
    message = one_line(err)
    assert "train/train_004.jpg (train)" in message and "test/test_004.jpg (test)" in message


def test_copies_stay_in_one_split_when_we_make_the_split(tmp_path):
    root = make_folder(tmp_path / "data", {"a": 20, "b": 20})
    for i in range(1, 6):
        shutil.copy(root / "a" / "img_0.png", root / "a" / f"copy_{i}.png")
    manifest = prepare_dataset("folder", root)
    copies = manifest.frame[manifest.frame["path"].str.match(r"a/(copy_|img_0.png)")]
    assert copies["split"].nunique() == 1 and len(copies) == 6


def test_more_shots_than_train_images_on_a_real_manifest(tmp_path):
    from cytotune.data import few_shot_indices

    manifest = prepare_dataset("bcfc", make_bcfc(tmp_path / "bcfc", per_class=10))
    assert len(few_shot_indices(manifest.frame, 7, seed=1)) == 14
    with pytest.raises(CytotuneError, match=r"class 'benign' has 7 training images, fewer than shots=8"):
        few_shot_indices(manifest.frame, 8, seed=1)
