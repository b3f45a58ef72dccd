"""Uncertainty of validation-selected results: bootstrap intervals of test accuracy, paired comparisons.

Every trial stores which test images it got right (result.json, `test_correct`), in the dataset's fixed
test-row order, so trials on one dataset can be paired image by image. A cell's chosen configuration has one
such vector per seed. The bootstrap resamples test images (the same draw for every seed, and for both sides
of a comparison: paired) and seeds (with replacement; jointly for two cells run on the same seeds, since a
seed fixes the few-shot sample), and takes the mean accuracy over the drawn seeds and images.

A paired comparison's p-value is two-sided, from the bootstrap distribution of the difference shifted to
the null (Efron & Tibshirani 1993, 16.4): p = (1 + #{|d* - d| >= |d|}) / (B + 1).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cytotune.metric_names import TEST_ECE, TEST_NLL
from cytotune.tracking.schema import parse_cell_key
from cytotune.train.calibration import parse_correctness

RESAMPLES = 2000
LEVEL = 0.95
METHOD_ORDER = ("lora", "linear_probe", "knn", "simpleshot", "zero_shot")


@dataclass(frozen=True)
class Interval:
    """A point estimate with a bootstrap percentile interval."""

    estimate: float
    low: float
    high: float


@dataclass(frozen=True)
class PairedDifference:
    """Accuracy of a minus accuracy of b, its bootstrap interval and two-sided p-value."""

    a: float
    b: float
    difference: Interval
    p_value: float


def _patterns(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct columns of a boolean (R, N) matrix as (R, P) floats and how many images show each."""
    patterns, counts = np.unique(rows, axis=1, return_counts=True)
    return patterns.astype(np.float64), counts


def _resampled_rows(rng: np.random.Generator, rows: np.ndarray, size: int) -> np.ndarray:
    """Accuracy (size, R) of each row of a boolean (R, images) matrix on `size` resamples of the images with
    replacement, the same resample for every row. Images with one pattern of rights and wrongs across the
    rows are interchangeable, so a resample is a multinomial draw over the distinct patterns (exactly the
    image bootstrap, at the cost of a few patterns instead of every image)."""
    patterns, counts = _patterns(rows)
    n_images = rows.shape[1]
    drawn = rng.multinomial(n_images, counts / n_images, size=size).astype(np.float64)  # (size, P)
    return drawn @ patterns.T / n_images


def _seed_draws(rng: np.random.Generator, n_seeds: int, size: int) -> np.ndarray:
    return rng.integers(0, n_seeds, size=(size, n_seeds))


def _over_seeds(per_seed: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Mean over drawn seeds (size, S) of per-seed accuracies (size, S)."""
    return np.take_along_axis(per_seed, seeds, axis=1).mean(1)


def _check(correct: np.ndarray) -> np.ndarray:
    correct = np.atleast_2d(np.asarray(correct, dtype=bool))
    if correct.shape[0] == 0 or correct.shape[1] == 0:
        raise ValueError("bootstrap needs at least one seed and one test image")
    return correct


def _percentile(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_accuracy(
    correct: np.ndarray, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0
) -> Interval:
    """Mean test accuracy of (seeds, images) correctness and its percentile interval, resampling test
    images and seeds."""
    correct = _check(correct)
    rng = np.random.default_rng(seed)
    per_seed = _resampled_rows(rng, correct, resamples)
    draws = _over_seeds(per_seed, _seed_draws(rng, correct.shape[0], resamples))
    return Interval(float(correct.mean()), *_percentile(draws, level))


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    same_seeds: bool = False,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> PairedDifference:
    """Accuracy of a minus b over the same test images, (seeds, images) each: interval and p-value. With
    `same_seeds` (both run on one seed list, in one order) seeds are drawn jointly, else independently."""
    a, b = _check(a), _check(b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired bootstrap needs the same test images; got {a.shape[1]} and {b.shape[1]}")
    if same_seeds and a.shape[0] != b.shape[0]:
        raise ValueError("same_seeds needs as many seeds on both sides")
    rng = np.random.default_rng(seed)
    observed = float(a.mean() - b.mean())
    per_row = _resampled_rows(rng, np.concatenate([a, b]), resamples)
    seeds_a = _seed_draws(rng, a.shape[0], resamples)
    seeds_b = seeds_a if same_seeds else _seed_draws(rng, b.shape[0], resamples)
    differences = _over_seeds(per_row[:, : len(a)], seeds_a) - _over_seeds(per_row[:, len(a) :], seeds_b)
    extreme = np.count_nonzero(np.abs(differences - observed) >= abs(observed) - 1e-12)
    return PairedDifference(
        a=float(a.mean()),
        b=float(b.mean()),
        difference=Interval(observed, *_percentile(differences, level)),
        p_value=float((1 + extreme) / (1 + resamples)),
    )


@dataclass
class ChosenTrials:
    """Per cell, the chosen configuration's trials: seeds, per-image correctness (seeds, images), pooled
    reliability bins, and mean test NLL and ECE over seeds."""

    seeds: dict[str, tuple[int, ...]] = field(default_factory=dict)
    correct: dict[str, np.ndarray] = field(default_factory=dict)
    reliability: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    nll: dict[str, float] = field(default_factory=dict)
    ece: dict[str, float] = field(default_factory=dict)


def chosen_rows(
    frame: pd.DataFrame, best: pd.DataFrame, searched: list[str] | tuple[str, ...]
) -> pd.DataFrame:
    """The finished trial rows of `frame` that make each cell's chosen configuration in `best`."""
    keep = pd.Series(False, index=frame.index)
    for _, row in best[best["n_seeds"] > 0].iterrows():
        match = (frame["cell_key"] == row["cell_key"]) & (frame["status"] == "finished")
        for name in searched:
            value = row[name]
            match &= frame[name].isna() if pd.isna(value) else frame[name] == value
        keep |= match
    return frame[keep]


def _parsed(text: str | None) -> dict | None:
    try:
        return None if text is None else json.loads(text)
    except ValueError:
        return None


def collect_chosen(rows: pd.DataFrame, read_result: Callable[[str], dict | None]) -> ChosenTrials:
    """The chosen trials' correctness and calibration, from each run's result.json (`read_result(run_id)`;
    None when the run has none). A cell is left out when any of its trials lacks per-image correctness."""
    out = ChosenTrials()
    for cell, trials in rows.sort_values("seed").groupby("cell_key", sort=True):
        results = [read_result(run_id) for run_id in trials["run_id"]]
        texts = [(r or {}).get("test_correct") or "" for r in results]
        if not all(texts) or len({len(t) for t in texts}) != 1:
            continue
        out.seeds[cell] = tuple(int(s) for s in trials["seed"])
        out.correct[cell] = np.stack([parse_correctness(t) for t in texts])
        bins = [r.get("test_reliability") or {} for r in results]
        if all(bins):
            out.reliability[cell] = {k: np.sum([b[k] for b in bins], axis=0).tolist() for k in bins[0]}
        for name, target in ((TEST_NLL, out.nll), (TEST_ECE, out.ece)):
            values = [r.get(name) for r in results]
            if all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                target[cell] = float(np.mean(values))
    return out


def interval_columns(best: pd.DataFrame, chosen: ChosenTrials, level: float = LEVEL) -> pd.DataFrame:
    """`best` with test_acc_ci_low, test_acc_ci_high (bootstrap over seeds and test images), test_nll_mean,
    test_ece_mean and n_test_images per cell (NaN where the trials hold no per-image results)."""
    out = best.copy()
    lows, highs, images = [], [], []
    for cell in out["cell_key"]:
        correct = chosen.correct.get(cell)
        interval = None if correct is None else bootstrap_accuracy(correct, level=level)
        lows.append(np.nan if interval is None else interval.low)
        highs.append(np.nan if interval is None else interval.high)
        images.append(np.nan if correct is None else correct.shape[1])
    out["test_acc_ci_low"], out["test_acc_ci_high"], out["n_test_images"] = lows, highs, images
    out["test_nll_mean"] = out["cell_key"].map(chosen.nll).astype(float)
    out["test_ece_mean"] = out["cell_key"].map(chosen.ece).astype(float)
    return out


LEVEL_METRICS = ("test_acc_level1", "test_acc_level2", "test_acc_level3")


def level_columns(best: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """`best` with test_acc_level{n}_mean and _std over the chosen trials (hierarchical datasets; NaN
    elsewhere), for the levels the runs report."""
    out = best.copy()
    for name in LEVEL_METRICS:
        if name not in rows.columns:
            continue
        stats = rows.groupby("cell_key")[name].agg(["mean", "std"])
        out[f"{name}_mean"] = out["cell_key"].map(stats["mean"]).astype(float)
        out[f"{name}_std"] = out["cell_key"].map(stats["std"]).astype(float)
    return out


def _field(row: pd.Series, name: str) -> object:
    value = row.get(name, np.nan)
    return None if pd.isna(value) else value


def _budget_text(row: pd.Series) -> str:
    shots, fraction = _field(row, "shots"), _field(row, "fraction")
    if shots is not None:
        return f"shots={int(shots)}"
    return "full" if fraction is None else f"fraction={float(fraction):g}"


def _block(row: pd.Series) -> str:
    return parse_cell_key(str(row["cell_key"])).block


def _method_rank(row: pd.Series) -> tuple[int, str]:
    method = str(row.get("method", ""))
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), _block(row))


def comparison_pairs(best: pd.DataFrame) -> list[tuple[str, str, str]]:
    """Which cells to compare, as (kind, cell a, cell b), on one dataset (and level) and data budget:
    "method": every two blocks on one backbone (a: LoRA first, then probe, knn, simpleshot); a LoRA cell
    with a budget also against the backbone's full-data probe when no probe has its budget; "backbone": per
    block, the backbone with the best mean validation accuracy (a) against each other backbone (b)."""
    cells = best[best["n_seeds"] > 0].copy()
    if cells.empty:
        return []
    cells["_budget"] = [_budget_text(row) for _, row in cells.iterrows()]
    cells["_data"] = [f"{row['dataset']}/{_field(row, 'level')}" for _, row in cells.iterrows()]
    cells["_block"] = [_block(row) for _, row in cells.iterrows()]
    pairs: list[tuple[str, str, str]] = []
    for _, group in cells.groupby(["_data", "_budget", "backbone"], sort=True):
        ordered = sorted(group.iterrows(), key=lambda item: _method_rank(item[1]))
        for i, (_, a) in enumerate(ordered):
            pairs += [("method", a["cell_key"], b["cell_key"]) for _, b in ordered[i + 1 :]]
    probes = cells[cells["method"] == "linear_probe"]
    probe_budgets = set(zip(probes["_data"], probes["backbone"], probes["_budget"], strict=True))
    full_probes: dict[tuple, list[str]] = {}
    for _, probe in probes[probes["_budget"] == "full"].iterrows():
        full_probes.setdefault((probe["_data"], probe["backbone"]), []).append(probe["cell_key"])
    for _, lora in cells[(cells["method"] == "lora") & (cells["_budget"] != "full")].iterrows():
        if (lora["_data"], lora["backbone"], lora["_budget"]) in probe_budgets:
            continue
        probe_keys = full_probes.get((lora["_data"], lora["backbone"]), [])
        pairs += [("lora vs full-data probe", lora["cell_key"], key) for key in probe_keys]
    for _, group in cells.groupby(["_data", "_budget", "_block"], sort=True):
        if len(group) < 2:
            continue
        ranked = group.sort_values(["val_acc_mean", "backbone"], ascending=[False, True], kind="stable")
        reference = ranked.iloc[0]["cell_key"]
        pairs += [("backbone", reference, key) for key in ranked["cell_key"].iloc[1:]]
    return pairs


COMPARISON_COLUMNS = [
    "kind",
    "dataset",
    "a",
    "b",
    "a_acc",
    "b_acc",
    "difference",
    "ci_low",
    "ci_high",
    "p_value",
    "n_test_images",
]


def paired_comparisons(best: pd.DataFrame, chosen: ChosenTrials, level: float = LEVEL) -> pd.DataFrame:
    """Paired bootstrap of each comparison_pairs pair whose cells hold per-image results on one test set:
    accuracies, difference a - b with its interval, and p-value."""
    datasets = dict(zip(best["cell_key"], best["dataset"], strict=True))
    rows = []
    for kind, a, b in comparison_pairs(best):
        if a not in chosen.correct or b not in chosen.correct:
            continue
        left, right = chosen.correct[a], chosen.correct[b]
        if left.shape[1] != right.shape[1]:
            continue
        result = paired_bootstrap(left, right, same_seeds=chosen.seeds[a] == chosen.seeds[b], level=level)
        rows.append(
            {
                "kind": kind,
                "dataset": datasets[a],
                "a": a,
                "b": b,
                "a_acc": result.a,
                "b_acc": result.b,
                "difference": result.difference.estimate,
                "ci_low": result.difference.low,
                "ci_high": result.difference.high,
                "p_value": result.p_value,
                "n_test_images": left.shape[1],
            }
        )
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def with_comparisons(best: pd.DataFrame, comparisons: pd.DataFrame) -> pd.DataFrame:
    """`best` with a `comparisons` column: per cell, the comparisons where it is side a (as records)."""
    out = best.copy()
    records = json.loads(comparisons.to_json(orient="records")) if len(comparisons) else []
    by_cell: dict[str, list[dict]] = {}
    for record in records:
        by_cell.setdefault(record["a"], []).append({k: v for k, v in record.items() if k != "a"})
    out["comparisons"] = [by_cell.get(cell, []) for cell in out["cell_key"]]
    return out


def study_uncertainty(
    experiment: str,
    tracking_uri: str | None,
    best: pd.DataFrame,
    where: str | None = None,
    frame: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, ChosenTrials]:
    """For a study's validation-selected `best` (chosen from `frame`, the study's runs_frame, else read
    here): best with interval, calibration, class-level and comparison columns, the paired comparisons, and
    the chosen trials' results (read from each run's result.json, several at once)."""
    from cytotune.tracking.runs import read_artifact_texts, runs_frame
    from cytotune.tracking.uri import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    frame = runs_frame(experiment, uri, where) if frame is None else frame
    rows = chosen_rows(frame, best, list(best.attrs.get("searched", ("lr",))))
    texts = read_artifact_texts(uri, list(rows["artifact_uri"]), "result.json")
    results = dict(zip(rows["run_id"], (_parsed(text) for text in texts), strict=True))
    chosen = collect_chosen(rows, results.get)
    comparisons = paired_comparisons(best, chosen)
    annotated = with_comparisons(level_columns(interval_columns(best, chosen), rows), comparisons)
    annotated.attrs.update(best.attrs)
    return annotated, comparisons, chosen
