"""Validation-selected results per cell: a pure function over a DataFrame with one row per trial run.

Only configurations finished on every seed compete, so each cell compares its configurations over the same
seeds (a configuration missing a seed would otherwise be judged on its luckier ones)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from cytotune.errors import CytotuneError
from cytotune.metric_names import BEST_VAL_ACC, TEST_ACC, TEST_BALANCED_ACC, TEST_MACRO_F1
from cytotune.tracking.schema import FINISHED

CHOSEN = "chosen"
NO_COMPLETE = "no configuration finished on every seed"
CELL_FIELDS = (
    "method",
    "backbone",
    "dataset",
    "level",
    "shots",
    "fraction",
    "lora.rank",
    "lora.targets",
    "lora.alpha",
    "lora.dropout",
    "lora.scaling",
)
MEAN_METRICS = (TEST_BALANCED_ACC, TEST_MACRO_F1, "trainable_params", "total_params")
_TIE_DECIMALS = 12


def select_best(
    frame: pd.DataFrame,
    searched: Sequence[str] = ("lr",),
    expected_seeds: int | Mapping[str, int] | None = None,
) -> pd.DataFrame:
    """Per cell, among the configurations finished on every seed, the searched values with the highest mean
    best_val_acc over seeds, and their test accuracy over those seeds.

    `frame` has one row per trial with columns cell_key, status, seed, best_val_acc, test_acc and the
    searched fields. A configuration (one set of searched values) competes only when it finished (status
    "finished", with best_val_acc and test_acc) on all the cell's expected seeds: one stopped early, failed
    or still running on any seed does not, so every cell compares configurations over the same seeds. Ties
    go to the smaller lr, then to the smaller values of the other searched fields in order. The result has
    one row per cell (sorted by cell key): the cell's fields, selection ("chosen", or NO_COMPLETE when no
    configuration finished on every seed: then NaN searched values and numbers and n_seeds 0), the chosen
    searched values, val_acc_mean, test_acc_mean, test_acc_std (sample std over seeds), n_seeds,
    expected_seeds, missing_seeds (True when nothing was chosen), seeds, n_candidates (configurations
    finished on every seed) and n_configurations (configurations tried). `expected_seeds` is one number, a
    number per cell key, or None for the largest number of distinct seeds seen in any cell.
    """
    searched = _ordered_searched(searched)
    if frame.empty:
        return pd.DataFrame(columns=_output_columns(frame, searched))
    required = {"cell_key", "status", "seed", BEST_VAL_ACC, TEST_ACC, *searched}
    missing = sorted(required - set(frame.columns))
    if missing:
        expected = ", ".join(sorted(required))
        raise CytotuneError(f"runs table: missing columns {', '.join(missing)}; expected columns {expected}")
    keys = ["cell_key", *searched]
    seen = int(frame.groupby("cell_key")["seed"].nunique().max())
    done = frame[(frame["status"] == FINISHED) & frame[BEST_VAL_ACC].notna() & frame[TEST_ACC].notna()]
    cells = frame.drop_duplicates("cell_key").set_index("cell_key").sort_index()
    expected = pd.Series([_expected(expected_seeds, str(cell), seen) for cell in cells.index], cells.index)
    configs = _configurations(done, keys)
    complete = configs[configs["n_seeds"].to_numpy() >= configs["cell_key"].map(expected).to_numpy(dtype=int)]
    chosen = _choose(complete, searched).set_index("cell_key")
    out = pd.DataFrame({"cell_key": cells.index})
    for name in CELL_FIELDS:
        if name in cells.columns and name not in searched:
            out[name] = cells[name].to_numpy()
    out = out.join(chosen, on="cell_key")
    nothing = out["selection"].isna()
    out["selection"] = np.where(nothing, NO_COMPLETE, out["selection"])
    out["n_seeds"] = out["n_seeds"].fillna(0).astype(int)
    out["n_candidates"] = out["n_candidates"].fillna(0).astype(int)
    out["seeds"] = [() if empty else seeds for empty, seeds in zip(nothing, out["seeds"], strict=True)]
    out["expected_seeds"] = expected.to_numpy()
    out["missing_seeds"] = out["n_seeds"] < out["expected_seeds"]
    tried = frame.groupby(keys, sort=False, dropna=False).size().reset_index()
    out["n_configurations"] = out["cell_key"].map(tried.groupby("cell_key").size())
    return out.reindex(columns=_output_columns(frame, searched)).reset_index(drop=True)


def _configurations(done: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per configuration (cell and searched values) of the finished trials: its means over them,
    test_acc's sample std, its distinct seeds (sorted) and their number."""
    groups = done.groupby(keys, sort=False, dropna=False)
    means = {f"{metric}_mean": (metric, "mean") for metric in MEAN_METRICS if metric in done.columns}
    configs = groups.agg(
        val_acc_mean=(BEST_VAL_ACC, "mean"),
        test_acc_mean=(TEST_ACC, "mean"),
        test_acc_std=(TEST_ACC, "std"),
        n_seeds=("seed", "nunique"),
        **means,
    )
    configs = configs.reset_index()
    configs["seeds"] = [tuple(sorted(int(seed) for seed in seeds)) for seeds in groups["seed"].unique()]
    return configs


def _ordered_searched(searched: Sequence[str]) -> list[str]:
    names = list(dict.fromkeys(searched))
    return (["lr"] if "lr" in names else []) + [name for name in names if name != "lr"]


def _expected(expected_seeds: int | Mapping[str, int] | None, cell: str, seen: int) -> int:
    if expected_seeds is None:
        return seen
    if isinstance(expected_seeds, Mapping):
        return int(expected_seeds.get(cell, seen))
    return int(expected_seeds)


def _choose(complete: pd.DataFrame, searched: list[str]) -> pd.DataFrame:
    """Per cell, the complete configuration with the highest mean validation accuracy (rounded, so float
    noise does not break ties; ties to the smaller searched values in order), and the cell's number of
    complete configurations."""
    ranked = complete.assign(_rank=complete["val_acc_mean"].round(_TIE_DECIMALS))
    ranked = ranked.sort_values(
        ["cell_key", "_rank", *searched], ascending=[True, False] + [True] * len(searched), kind="stable"
    )
    best = ranked.drop_duplicates("cell_key").drop(columns="_rank")
    best.insert(1, "selection", CHOSEN)
    return best.assign(n_candidates=best["cell_key"].map(complete.groupby("cell_key").size()).astype(int))


def _output_columns(frame: pd.DataFrame, searched: list[str]) -> list[str]:
    cell = [name for name in CELL_FIELDS if name in frame.columns and name not in searched]
    means = [f"{metric}_mean" for metric in MEAN_METRICS if metric in frame.columns]
    stats = ["val_acc_mean", "test_acc_mean", "test_acc_std", "n_seeds", "expected_seeds", "missing_seeds"]
    counts = ["seeds", "n_candidates", "n_configurations"]
    return ["cell_key", *cell, "selection", *searched, *stats, *counts, *means]
