"""A HiCervix model scored at the coarser levels: predictions mapped up the class tree of the CSVs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from data_layouts import make_hicervix

from cytotune.config import TrainSettings, TrialConfig
from cytotune.data.hierarchy import class_tree
from cytotune.errors import CytotuneError
from cytotune.train import run_trial
from cytotune.train.scoring import level_accuracies

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_level_accuracies_by_hand():
    tree = {"a1": {1: "A"}, "a2": {1: "A"}, "b1": {1: "B"}}
    labels, predictions = np.array([0, 0, 1, 2, 2]), np.array([0, 1, 2, 2, 0])
    # fine: right on rows 0 and 3 (2/5); coarse: a1->A, a2->A right on rows 0, 1, 3 (3/5)
    assert level_accuracies(tree, ["a1", "a2", "b1"], 2, labels, predictions) == {
        "test_acc_level1": pytest.approx(3 / 5),
        "test_acc_level2": pytest.approx(2 / 5),
    }


def test_tree_comes_from_the_csv_columns_and_level_2_fills_level_3(tmp_path):
    root = make_hicervix(tmp_path / "hicervix")
    assert class_tree("hicervix", root, 3) == {
        "ASC-US": {1: "ASC", 2: "ASC-US"},
        "ASC-H": {1: "ASC", 2: "ASC-H"},
        "LSIL-koilo": {1: "SIL", 2: "LSIL"},
        "HSIL-2": {1: "SIL", 2: "HSIL"},
        "HSIL-3": {1: "SIL", 2: "HSIL"},
    }
    assert class_tree("hicervix", root, 2)["HSIL"] == {1: "SIL"}
    assert class_tree("hicervix", root, 1) is None and class_tree("sipakmed", root, 3) is None


def test_a_class_with_two_parents_is_refused(tmp_path):
    rows = {
        split: [(f"{split}_0.jpg", "ASC", "ASC-US", ""), (f"{split}_1.jpg", "SIL", "ASC-US", "")]
        for split in ("train", "val", "test")
    }
    root = make_hicervix(tmp_path / "bad", rows)
    with pytest.raises(CytotuneError, match="level-3 class 'ASC-US' has parents ASC, SIL at level 1"):
        class_tree("hicervix", root, 3)


@pytest.mark.parametrize("level", [3, 2])
def test_a_fine_model_is_scored_at_every_coarser_level(tmp_path, level):
    root = make_hicervix(tmp_path / "hicervix")
    cfg = TrialConfig(
        method="simpleshot",
        backbone="tiny_clip",
        dataset="hicervix",
        root=root,
        level=level,
        cache_dir=tmp_path / "cache",
        train=TrainSettings(image_cache_size=32, device="cpu"),
    )
    result = run_trial(cfg)
    # independent: coarse labels from the CSV columns, summed over the confusion matrix's cells
    test = pd.read_csv(root / "test.csv", dtype=str, keep_default_na=False)
    parent = {}
    for _, row in test.iterrows():
        fine = row["level_3"] or row["level_2"] if level == 3 else row["level_2"]
        if fine:
            parent[fine] = {1: row["level_1"], 2: row["level_2"]}
    confusion = np.array(result.confusion_matrix)
    for coarse in range(1, level):
        same = np.array(
            [[parent[i][coarse] == parent[j][coarse] for j in result.classes] for i in result.classes]
        )
        expected = confusion[same].sum() / confusion.sum()
        assert getattr(result, f"test_acc_level{coarse}") == pytest.approx(expected)
    assert getattr(result, f"test_acc_level{level}") == pytest.approx(result.test_acc)
    assert np.isnan(result.test_acc_level3) == (level == 2)
    assert result.test_acc_level1 >= result.test_acc
