"""Which manifest rows a trial uses: few-shot, data fraction, validation and test (pure, seeded functions).

Every function takes the manifest frame (columns label and split at least) and returns positional row
indices, sorted. Draws are per class from one seeded permutation, so sets are nested in shots and fraction.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from cytotune.errors import CytotuneError

FEWSHOT_VALIDATION_PER_CLASS = 4  # min(shots, 4) val images per class: the authors' code
VALIDATION_MODES = ("full", "fewshot")


def _rows(frame: pd.DataFrame, split: str) -> np.ndarray:
    return np.flatnonzero(frame["split"].to_numpy() == split)


def _class_orders(frame: pd.DataFrame, split: str, seed: int, stream: int) -> dict[int, np.ndarray]:
    """For each label, its rows in `split` in a seeded random order (the same for every k, p, backbone)."""
    rows = _rows(frame, split)
    labels = frame["label"].to_numpy()[rows]
    orders = {}
    for label in sorted(set(frame["label"].tolist())):
        members = rows[labels == label]
        rng = np.random.default_rng([int(seed), int(label), stream])
        orders[int(label)] = members[rng.permutation(len(members))]
    return orders


def _class_name(frame: pd.DataFrame, label: int) -> str:
    if "class_name" in frame.columns:
        names = frame.loc[frame["label"] == label, "class_name"]
        if len(names):
            return str(names.iloc[0])
    return str(label)


def train_indices(frame: pd.DataFrame) -> np.ndarray:
    """All rows of the train split."""
    return _rows(frame, "train")


def test_indices(frame: pd.DataFrame) -> np.ndarray:
    """All rows of the test split."""
    return _rows(frame, "test")


test_indices.__test__ = False  # a data function, not a pytest test, when test modules import it


def few_shot_indices(frame: pd.DataFrame, shots: int, seed: int, repeat: bool = False) -> np.ndarray:
    """`shots` train rows per class, seeded and nested in shots (the 2-shot set contains the 1-shot set).

    A class with fewer train rows than `shots` is an error naming it; with `repeat` its rows are taken in
    their seeded order and cycled up to `shots` (each image as often as the others, +-1; the authors' code
    drew such a class with replacement), so the result may hold a row more than once.
    """
    if shots < 1:
        raise CytotuneError(f"shots={shots} is invalid: expected a whole number >= 1")
    chosen = []
    for label, order in _class_orders(frame, "train", seed, stream=0).items():
        if len(order) < shots and not (repeat and len(order)):
            raise CytotuneError(
                f"class {_class_name(frame, label)!r} has {len(order)} training images, "
                f"fewer than shots={shots}: "
                f"expected shots <= {len(order)}"
                + ("" if repeat else " (or train.short_class: repeat to repeat its images)")
            )
        chosen.append(np.resize(order, shots))
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def fraction_indices(frame: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """A seeded, stratified `fraction` of the train rows (at least one per class), nested in fraction."""
    if not 0 < fraction <= 1:
        raise CytotuneError(f"fraction={fraction} is invalid: expected 0 < fraction <= 1")
    chosen = []
    for order in _class_orders(frame, "train", seed, stream=0).values():
        if len(order):
            take = max(1, math.floor(fraction * len(order) + 0.5))
            chosen.append(order[:take])
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def validation_indices(
    frame: pd.DataFrame, shots: int | None = None, seed: int = 0, mode: str = "full"
) -> np.ndarray:
    """Validation rows: the whole val split ("full"), or, for a few-shot trial, min(shots, 4) val rows per
    class ("fewshot", the authors' code), seeded and nested in shots like few_shot_indices; without shots
    "fewshot" is the whole val split too. A class with fewer val rows than asked contributes all it has (the
    authors' code drew such a class with replacement, repeating images)."""
    if mode not in VALIDATION_MODES:
        expected = " or ".join(repr(m) for m in VALIDATION_MODES)
        raise CytotuneError(f"validation mode {mode!r} is invalid: expected {expected}")
    if mode == "full" or shots is None:
        return _rows(frame, "val")
    per_class = min(int(shots), FEWSHOT_VALIDATION_PER_CLASS)
    chosen = [order[:per_class] for order in _class_orders(frame, "val", seed, stream=1).values()]
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)
