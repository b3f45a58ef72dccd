"""Class trees of hierarchical datasets, read from the dataset's own files (HiCervix: the level_1, level_2,
level_3 columns of its CSVs), so that a fine-level model can be scored at the coarser levels."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd

from cytotune.data.loaders import HICERVIX_SPLITS, _hicervix_csv_dir, _hicervix_labels
from cytotune.errors import CytotuneError


def class_tree(dataset: str, root: Path, level: int) -> dict[str, dict[int, str]] | None:
    """Each class at `level` mapped to its ancestor at every coarser level ({class: {1: name, 2: name}});
    None for a dataset without levels or at level 1. A class with two parents at one level is refused."""
    if dataset != "hicervix" or level == 1:
        return None
    return _hicervix_tree(Path(root).resolve(), level)


@lru_cache(maxsize=8)
def _hicervix_tree(root: Path, level: int) -> dict[str, dict[int, str]]:
    csv_dir = _hicervix_csv_dir(root)
    table = pd.concat(
        [pd.read_csv(csv_dir / f"{s}.csv", dtype=str, keep_default_na=False) for s in HICERVIX_SPLITS],
        ignore_index=True,
    )
    frame = pd.DataFrame({n: _hicervix_labels(table, n) for n in range(1, level + 1)}).dropna(subset=[level])
    tree: dict[str, dict[int, str]] = {str(name): {} for name in frame[level].unique()}
    for coarse in range(1, level):
        parents = frame.dropna(subset=[coarse]).groupby(level)[coarse].unique()
        for name in tree:
            found = sorted(parents.get(name, []))
            if len(found) != 1:
                what = f"parents {', '.join(found)}" if found else "no parent"
                raise CytotuneError(
                    f"hicervix at {root}: level-{level} class {name!r} has {what} at level {coarse} in the "
                    f"CSVs' level_{coarse} column; expected exactly one"
                )
            tree[name][coarse] = str(found[0])
    return tree
