"""Validation-selected results per cell: a pure function over a DataFrame with one row per trial run.

Only configurations finished on every seed compete, so each cell compares its configurations over the same
seeds (a configuration missing a seed would otherwise be judged on its luckier ones)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from cytotune.errors import CytotuneError
from cytotune.tracking.schema import FINISHED
from cytotune.train.result import BEST_VAL_ACC, TEST_ACC, TEST_BALANCED_ACC, TEST_MACRO_F1

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
    seen = int(frame.groupby("cell_key")["seed"].nunique().max())
    done = frame[(frame["status"] == FINISHED) & frame[BEST_VAL_ACC].notna() & frame[TEST_ACC].notna()]
    rows = []
    for cell, trials in frame.groupby("cell_key", sort=True):
        expected = _expected(expected_seeds, str(cell), seen)
        row = {"cell_key": cell, **_cell_fields(trials, searched)}
        complete = _complete(done[done["cell_key"] == cell], searched, expected)
        row.update(_choose(complete, searched) if len(complete) else _nothing(searched))
        row["expected_seeds"] = expected
        row["missing_seeds"] = bool(row["n_seeds"] < expected)
        row["n_configurations"] = _configurations(trials, searched)
        rows.append(row)
    return pd.DataFrame(rows, columns=_output_columns(frame, searched))


def _complete(finished: pd.DataFrame, searched: list[str], expected: int) -> pd.DataFrame:
    """The finished trials of the configurations finished on at least `expected` distinct seeds."""
    if finished.empty:
        return finished
    keys = searched or ["cell_key"]
    seeds = finished.groupby(keys, sort=False, dropna=False)["seed"].transform("nunique")
    return finished[seeds >= expected]


def _configurations(trials: pd.DataFrame, searched: list[str]) -> int:
    keys = searched or ["cell_key"]
    return int(trials.groupby(keys, sort=False, dropna=False).ngroups)


def _ordered_searched(searched: Sequence[str]) -> list[str]:
    names = list(dict.fromkeys(searched))
    return (["lr"] if "lr" in names else []) + [name for name in names if name != "lr"]


def _expected(expected_seeds: int | Mapping[str, int] | None, cell: str, seen: int) -> int:
    if expected_seeds is None:
        return seen
    if isinstance(expected_seeds, Mapping):
        return int(expected_seeds.get(cell, seen))
    return int(expected_seeds)


def _cell_fields(trials: pd.DataFrame, searched: list[str]) -> dict:
    return {
        name: trials[name].iloc[0] for name in CELL_FIELDS if name in trials.columns and name not in searched
    }


def _choose(candidates: pd.DataFrame, searched: list[str]) -> dict:
    keys = searched or ["cell_key"]
    groups = candidates.groupby(keys, sort=False, dropna=False)
    summary = groups.agg(
        val_acc_mean=(BEST_VAL_ACC, "mean"),
        test_acc_mean=(TEST_ACC, "mean"),
        test_acc_std=(TEST_ACC, "std"),
        n_seeds=("seed", "nunique"),
    ).reset_index()
    summary["_rank"] = summary["val_acc_mean"].round(_TIE_DECIMALS)
    summary = summary.sort_values(
        ["_rank", *searched], ascending=[False] + [True] * len(searched), kind="stable"
    )
    best = summary.iloc[0]
    chosen = candidates
    for name in searched:
        chosen = chosen[_same(chosen[name], best[name])]
    out = {"selection": CHOSEN, **{name: best[name] for name in searched}}
    out.update(
        val_acc_mean=float(best["val_acc_mean"]),
        test_acc_mean=float(best["test_acc_mean"]),
        test_acc_std=float(best["test_acc_std"]),
        n_seeds=int(best["n_seeds"]),
        seeds=tuple(sorted(int(s) for s in chosen["seed"].unique())),
        n_candidates=len(summary),
    )
    for metric in MEAN_METRICS:
        if metric in chosen.columns:
            out[f"{metric}_mean"] = float(chosen[metric].mean())
    return out


def _same(column: pd.Series, value: object) -> pd.Series:
    return column.isna() if pd.isna(value) else column == value


def _nothing(searched: list[str]) -> dict:
    return {
        "selection": NO_COMPLETE,
        **{name: np.nan for name in searched},
        "val_acc_mean": np.nan,
        "test_acc_mean": np.nan,
        "test_acc_std": np.nan,
        "n_seeds": 0,
        "seeds": (),
        "n_candidates": 0,
    }


def _output_columns(frame: pd.DataFrame, searched: list[str]) -> list[str]:
    cell = [name for name in CELL_FIELDS if name in frame.columns and name not in searched]
    means = [f"{metric}_mean" for metric in MEAN_METRICS if metric in frame.columns]
    stats = ["val_acc_mean", "test_acc_mean", "test_acc_std", "n_seeds", "expected_seeds", "missing_seeds"]
    counts = ["seeds", "n_candidates", "n_configurations"]
    return ["cell_key", *cell, "selection", *searched, *stats, *counts, *means]
