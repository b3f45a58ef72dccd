"""Seeded, stratified train/val/test splits for datasets that ship without one (pure functions)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cytotune.errors import CytotuneError

SPLITS = ("train", "val", "test")


def check_split_fractions(split: Sequence[float]) -> tuple[float, float, float]:
    """The (train, val, test) fractions, validated: three non-negative numbers summing to 1, train > 0."""
    values = tuple(float(v) for v in split)
    if len(values) != 3 or any(v < 0 for v in values) or values[0] <= 0 or not math.isclose(sum(values), 1.0):
        raise CytotuneError(
            f"split {tuple(split)} is invalid: expected three fractions (train, val, test) >= 0 "
            "summing to 1, "
            "with train > 0, such as (0.7, 0.1, 0.2)"
        )
    return values  # type: ignore[return-value]


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """How many of `n` items go to each split: largest remainders, and at least one in every non-empty split
    as long as there are enough items."""
    raw = [n * f for f in fractions]
    counts = [math.floor(r) for r in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: (-round(raw[i] - counts[i], 9), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    wanted = [i for i, f in enumerate(fractions) if f > 0]
    if n >= len(wanted):
        for i in wanted:
            if counts[i] == 0:
                counts[max(range(len(counts)), key=lambda j: counts[j])] -= 1
                counts[i] = 1
    return counts


def stratified_split(
    labels: np.ndarray, groups: np.ndarray, fractions: Sequence[float], seed: int
) -> np.ndarray:
    """A split name per item, stratified by label and seeded; items sharing a group (the same image content)
    always land in the same split. A group takes the label of its first item."""
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    result = np.empty(len(labels), dtype=object)
    unique_groups, first = np.unique(groups, return_index=True)
    group_labels = labels[first]
    group_split: dict[object, str] = {}
    for label in np.unique(group_labels):
        members = unique_groups[group_labels == label]
        order = np.random.default_rng([seed, int(label)]).permutation(len(members))
        counts = split_counts(len(members), fractions)
        bounds = np.cumsum([0, *counts])
        for split, start, stop in zip(SPLITS, bounds[:-1], bounds[1:], strict=True):
            for group in members[order[start:stop]]:
                group_split[group] = split
    for i, group in enumerate(groups):
        result[i] = group_split[group]
    return result
