"""The dataset registry: one decorator registers a loader that lists a dataset root as users download it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cytotune.errors import CytotuneError


@dataclass(frozen=True, eq=False)
class DatasetListing:
    """What a loader found under a root: classes in their fixed order and one row per image.

    `frame` has columns path (relative to the root, str), class_name, and split ("train"|"val"|"test") when
    the dataset has an official split (None otherwise). `missing` lists images named by the dataset but not
    found, `sources` the non-image files (such as CSVs) the listing was read from, `notes` what was dropped.
    """

    classes: tuple[str, ...]
    frame: pd.DataFrame
    missing: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


Loader = Callable[[Path, int], DatasetListing]


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: its name, the layout it expects, whether it has an official split and levels."""

    name: str
    loader: Loader = field(repr=False)
    layout: str
    official_split: bool = False
    uses_level: bool = False


_DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(
    name: str, *, layout: str, official_split: bool = False, uses_level: bool = False
) -> Callable[[Loader], Loader]:
    """Decorator registering `loader(root, level) -> DatasetListing` under `name`."""

    def decorate(loader: Loader) -> Loader:
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} is registered twice")
        _DATASETS[name] = DatasetSpec(name, loader, layout, official_split, uses_level)
        return loader

    return decorate


def list_datasets() -> list[str]:
    """Names of the registered datasets, sorted."""
    return sorted(_DATASETS)


def get_dataset(name: str) -> DatasetSpec:
    """The registered dataset `name`; an unknown name is an error listing the known ones."""
    try:
        return _DATASETS[name]
    except KeyError:
        raise CytotuneError(
            f"unknown dataset {name!r}: expected one of {', '.join(list_datasets())}"
        ) from None
