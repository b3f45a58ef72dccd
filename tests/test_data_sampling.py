"""Sampling and splitting are pure functions of (frame, k or p, seed): checked on hand-built frames."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from cytotune.data import few_shot_indices, fraction_indices, test_indices, train_indices, validation_indices
from cytotune.data.splits import check_split_fractions, split_counts, stratified_split
from cytotune.errors import CytotuneError


def make_frame(per_class_split: dict[str, dict[str, int]], shuffle_seed: int | None = 0) -> pd.DataFrame:
    """A manifest-like frame: per class, how many rows in each split (shuffled, so order means nothing)."""
    rows = []
    for label, (class_name, splits) in enumerate(per_class_split.items()):
        for split, count in splits.items():
            rows += [(f"{class_name}/{split}_{i}.png", class_name, label, split) for i in range(count)]
    frame = pd.DataFrame(rows, columns=["path", "class_name", "label", "split"])
    if shuffle_seed is not None:
        frame = frame.sample(frac=1, random_state=shuffle_seed).reset_index(drop=True)
    frame["sha1"] = [f"{i:040x}" for i in range(len(frame))]
    return frame


FRAME = make_frame(
    {
        "a": {"train": 30, "val": 6, "test": 9},
        "b": {"train": 17, "val": 3, "test": 5},
        "c": {"train": 60, "val": 9, "test": 20},
    }
)


def per_class(frame: pd.DataFrame, rows: np.ndarray) -> dict[int, int]:
    return frame.iloc[rows]["label"].value_counts().sort_index().to_dict()


def test_few_shot_is_k_per_class_from_train_only():
    for seed in range(5):
        for shots in (1, 2, 4, 8, 16):
            rows = few_shot_indices(FRAME, shots, seed)
            assert (FRAME.iloc[rows]["split"] == "train").all()
            assert per_class(FRAME, rows) == {0: shots, 1: shots, 2: shots}
            assert len(set(rows.tolist())) == len(rows)
            assert list(rows) == sorted(rows)


def test_few_shot_is_nested_in_shots_and_seeded():
    for seed in range(10):
        previous: set[int] = set()
        for shots in (1, 2, 4, 8, 16, 17):
            current = set(few_shot_indices(FRAME, shots, seed).tolist())
            assert previous <= current
            previous = current
        assert np.array_equal(few_shot_indices(FRAME, 4, seed), few_shot_indices(FRAME, 4, seed))
    draws = {tuple(few_shot_indices(FRAME, 4, seed)) for seed in range(10)}
    assert len(draws) == 10


def test_few_shot_depends_on_the_rows_not_on_other_classes():
    """Adding a class does not change the images drawn for the existing classes."""
    bigger = make_frame(
        {
            "a": {"train": 30, "val": 6, "test": 9},
            "b": {"train": 17, "val": 3, "test": 5},
            "c": {"train": 60, "val": 9, "test": 20},
            "d": {"train": 8, "val": 1, "test": 1},
        }
    )
    paths = lambda f, r: set(f.iloc[r]["path"][f.iloc[r]["label"] < 3])  # noqa: E731
    base = make_frame(
        {
            "a": {"train": 30, "val": 6, "test": 9},
            "b": {"train": 17, "val": 3, "test": 5},
            "c": {"train": 60, "val": 9, "test": 20},
        },
        shuffle_seed=None,
    )
    bigger_sorted = bigger.sort_values("path").reset_index(drop=True)
    base_sorted = base.sort_values("path").reset_index(drop=True)
    assert paths(base_sorted, few_shot_indices(base_sorted, 4, 3)) == paths(
        bigger_sorted, few_shot_indices(bigger_sorted, 4, 3)
    )


def test_more_shots_than_a_class_has_names_the_class_and_count():
    with pytest.raises(CytotuneError, match=r"class 'b' has 17 training images, fewer than shots=18"):
        few_shot_indices(FRAME, 18, 0)
    with pytest.raises(CytotuneError, match="shots=0"):
        few_shot_indices(FRAME, 0, 0)


def test_repeat_cycles_a_short_class_and_stays_nested():
    """40 shots: class a (30 train rows) takes every row once and 10 twice; b (17) every row twice and 6 three
    times; c (60) 40 distinct rows. Counts by hand: 40 = 30 + 10 = 2 x 17 + 6."""
    rows = few_shot_indices(FRAME, 40, 2, repeat=True)
    assert (FRAME.iloc[rows]["split"] == "train").all()
    labels = FRAME["label"].to_numpy()[rows]
    expected = {0: (30, {1: 20, 2: 10}), 1: (17, {2: 11, 3: 6}), 2: (40, {1: 40})}
    for label, (distinct, multiplicities) in expected.items():
        counts = Counter(rows[labels == label].tolist())
        assert len(counts) == distinct and dict(Counter(counts.values())) == multiplicities
    # nested in shots, with multiplicity; without a short class, the same rows as without repeat
    smaller = Counter(few_shot_indices(FRAME, 20, 2, repeat=True).tolist())
    larger = Counter(rows.tolist())
    assert all(count <= larger[row] for row, count in smaller.items())
    assert np.array_equal(few_shot_indices(FRAME, 17, 2, repeat=True), few_shot_indices(FRAME, 17, 2))
    with pytest.raises(CytotuneError, match="short_class: repeat"):
        few_shot_indices(FRAME, 18, 2)


def test_fraction_is_stratified_nested_and_train_only():
    sizes = {0: 30, 1: 17, 2: 60}
    for seed in range(5):
        previous: set[int] = set()
        for fraction in (0.05, 0.1, 0.25, 0.5, 0.7, 1.0):
            rows = fraction_indices(FRAME, fraction, seed)
            assert (FRAME.iloc[rows]["split"] == "train").all()
            counts = per_class(FRAME, rows)
            for label, size in sizes.items():
                assert counts[label] == max(1, int(np.floor(fraction * size + 0.5)))
            assert previous <= set(rows.tolist())
            previous = set(rows.tolist())
    assert set(fraction_indices(FRAME, 1.0, 0)) == set(train_indices(FRAME))
    assert not np.array_equal(fraction_indices(FRAME, 0.5, 0), fraction_indices(FRAME, 0.5, 1))
    for bad in (0, -0.1, 1.5):
        with pytest.raises(CytotuneError, match="fraction"):
            fraction_indices(FRAME, bad, 0)


def test_few_shot_sets_start_the_fraction_order():
    """For one seed the k-shot set is a prefix of the same per-class order the fractions take."""
    rows = set(few_shot_indices(FRAME, 1, 7).tolist())
    assert set(fraction_indices(FRAME, 0.01, 7).tolist()) == rows
    assert set(few_shot_indices(FRAME, 3, 7).tolist()) <= set(fraction_indices(FRAME, 0.2, 7).tolist())


def test_validation_full_and_fewshot_modes():
    full = validation_indices(FRAME)
    assert set(full) == set(np.flatnonzero(FRAME["split"] == "val"))
    assert np.array_equal(validation_indices(FRAME, shots=2, seed=0, mode="full"), full)
    assert np.array_equal(validation_indices(FRAME, shots=None, seed=0, mode="fewshot"), full)
    for shots, expected in ((1, 1), (2, 2), (4, 4), (16, 4)):
        rows = validation_indices(FRAME, shots=shots, seed=3, mode="fewshot")
        assert (FRAME.iloc[rows]["split"] == "val").all()
        counts = per_class(FRAME, rows)
        assert counts == {0: expected, 1: min(expected, 3), 2: expected}
    assert set(validation_indices(FRAME, 1, 3, "fewshot")) <= set(validation_indices(FRAME, 2, 3, "fewshot"))
    draws = {tuple(validation_indices(FRAME, 2, seed, "fewshot")) for seed in range(6)}
    assert len(draws) > 1  # seeded: other seeds draw other validation images
    again = validation_indices(FRAME, 2, 3, "fewshot")
    assert np.array_equal(validation_indices(FRAME, 2, 3, "fewshot"), again)
    with pytest.raises(CytotuneError, match="validation mode"):
        validation_indices(FRAME, 1, 0, mode="half")


def test_train_val_test_rows_are_disjoint_and_cover_the_frame():
    train, val, test = train_indices(FRAME), validation_indices(FRAME), test_indices(FRAME)
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    assert len(train) + len(val) + len(test) == len(FRAME)
    for seed in range(5):
        assert not set(few_shot_indices(FRAME, 5, seed)) & (set(val) | set(test))
        assert not set(validation_indices(FRAME, 4, seed, "fewshot")) & set(train)


def test_split_counts_keep_every_split_when_possible():
    assert split_counts(100, (0.7, 0.1, 0.2)) == [70, 10, 20]
    assert split_counts(5, (0.7, 0.1, 0.2)) == [3, 1, 1]
    assert split_counts(2, (0.7, 0.1, 0.2)) == [2, 0, 0]
    assert split_counts(10, (0.8, 0.0, 0.2)) == [8, 0, 2]
    for n in range(0, 60):
        counts = split_counts(n, (0.7, 0.1, 0.2))
        assert sum(counts) == n and min(counts) >= 0
        if n >= 3:
            assert min(counts) >= 1


def test_stratified_split_is_seeded_stratified_and_keeps_copies_together():
    labels = np.repeat([0, 1, 2], [50, 20, 30])
    groups = np.array([f"h{i}" for i in range(100)])
    groups[7] = groups[3]  # the same image twice
    first = stratified_split(labels, groups, (0.7, 0.1, 0.2), seed=0)
    assert np.array_equal(first, stratified_split(labels, groups, (0.7, 0.1, 0.2), seed=0))
    assert not np.array_equal(first, stratified_split(labels, groups, (0.7, 0.1, 0.2), seed=1))
    assert first[7] == first[3]
    table = pd.crosstab(labels, first)
    assert table.loc[1].to_dict() == {"test": 4, "train": 14, "val": 2}
    assert table.loc[2].to_dict() == {"test": 6, "train": 21, "val": 3}
    other = stratified_split(labels, groups, (0.6, 0.2, 0.2), seed=0)
    assert pd.crosstab(labels, other).loc[2].to_dict() == {"test": 6, "train": 18, "val": 6}


def test_split_fractions_are_checked():
    assert check_split_fractions([0.6, 0.2, 0.2]) == (0.6, 0.2, 0.2)
    for bad in ((0.7, 0.2, 0.2), (0.5, 0.5), (0.0, 0.5, 0.5), (1.2, -0.1, -0.1)):
        with pytest.raises(CytotuneError, match="expected three fractions"):
            check_split_fractions(bad)
