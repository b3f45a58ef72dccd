"""Figures of the report's uncertainty section: a forest plot of paired comparisons and reliability
diagrams of each cell's chosen configuration."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cytotune.report.figures import COLOURS
from cytotune.report.paper import dataset_label

KIND_COLOURS = {"method": COLOURS[0], "lora vs full-data probe": COLOURS[1], "backbone": COLOURS[2]}
FOREST_ROWS = 60  # comparisons a forest page (a study of thousands of trials has thousands of them)
RELIABILITY_CELLS = 24  # cells a reliability page


def page_paths(path: Path, pages: int) -> list[Path]:
    """`path` for a single page, else `path` numbered: stem_1.png, stem_2.png, ..."""
    path = Path(path)
    if pages == 1:
        return [path]
    return [path.with_name(f"{path.stem}_{page}{path.suffix}") for page in range(1, pages + 1)]


def _pages(count: int, size: int) -> list[slice]:
    return [slice(start, start + size) for start in range(0, count, size)]


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def forest_figures(comparisons: pd.DataFrame, path: Path, level: float = 0.95) -> list[Path]:
    """Each paired comparison as a row (by dataset, kind, a, b): difference of test accuracy (a - b,
    points) with its bootstrap interval, colour by kind, p-value at the right; FOREST_ROWS rows a page, at
    `path` or, for several pages, numbered beside it (page_paths). None drawn without comparisons."""
    rows = comparisons.sort_values(["dataset", "kind", "a", "b"], kind="stable").reset_index(drop=True)
    pages = _pages(len(rows), FOREST_ROWS)
    paths = page_paths(path, len(pages))
    for number, (page, out) in enumerate(zip(pages, paths, strict=True), start=1):
        title = f" (page {number} of {len(pages)})" if len(pages) > 1 else ""
        _forest_page(rows.iloc[page].reset_index(drop=True), out, level, title)
    return paths


def _forest_page(rows: pd.DataFrame, path: Path, level: float, title: str) -> Path:
    fig = Figure(figsize=(11.0, 1.6 + 0.32 * len(rows)), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(rows))[::-1]
    for yi, (_, row) in zip(y, rows.iterrows(), strict=True):
        colour = KIND_COLOURS.get(row["kind"], COLOURS[3])
        centre, low, high = 100 * row["difference"], 100 * row["ci_low"], 100 * row["ci_high"]
        ax.plot([low, high], [yi, yi], color=colour, linewidth=2)
        ax.plot([centre], [yi], marker="o", color=colour)
        ax.annotate(
            f"p={row['p_value']:.3g}",
            (1.0, yi),
            xycoords=("axes fraction", "data"),
            xytext=(4, -3),
            textcoords="offset points",
            fontsize=8,
        )
    ax.axvline(0, color="black", linewidth=1)
    ax.set_yticks(y, [f"{row['a']}  vs  {row['b']}" for _, row in rows.iterrows()], fontsize=7)
    ax.set_xlabel(f"test accuracy difference a - b (points), {100 * level:g}% paired bootstrap interval")
    fig.suptitle(
        f"Paired comparisons on the same test images{title}\n(blue: methods on one budget and backbone, red: "
        "LoRA vs the backbone's full-data probe, green: backbones, best on validation first)",
        fontsize=10,
    )
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def reliability_figures(
    best: pd.DataFrame, reliability: dict[str, dict[str, list[float]]], dataset: str, path: Path
) -> list[Path]:
    """Reliability diagrams of the dataset's cells (chosen configuration, bins pooled over seeds): accuracy
    per confidence bin against the diagonal, bar width by bin, ECE in each title; RELIABILITY_CELLS cells a
    page, at `path` or numbered beside it (page_paths); none without bins."""
    cells = [key for key in best[best["dataset"] == dataset]["cell_key"] if key in reliability]
    pages = _pages(len(cells), RELIABILITY_CELLS)
    paths = page_paths(path, len(pages))
    for number, (page, out) in enumerate(zip(pages, paths, strict=True), start=1):
        title = f" (page {number} of {len(pages)})" if len(pages) > 1 else ""
        _reliability_page(cells[page], reliability, dataset, out, title)
    return paths


def _reliability_page(
    cells: list[str], reliability: dict[str, dict[str, list[float]]], dataset: str, path: Path, title: str
) -> Path:
    cols = min(4, len(cells))
    rows = math.ceil(len(cells) / cols)
    fig = Figure(figsize=(3.3 * cols, 3.1 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, cell in zip(axes, cells, strict=False):
        bins = {name: np.asarray(values, dtype=float) for name, values in reliability[cell].items()}
        n_bins = len(bins["count"])
        edges = np.linspace(0, 1, n_bins + 1)
        seen = bins["count"] > 0
        accuracy = np.divide(bins["correct"], bins["count"], out=np.zeros(n_bins), where=seen)
        confidence = np.divide(bins["confidence"], bins["count"], out=np.zeros(n_bins), where=seen)
        ece = float(np.abs(bins["correct"] - bins["confidence"]).sum() / bins["count"].sum())
        ax.bar(edges[:-1][seen], accuracy[seen], width=1 / n_bins, align="edge", color=COLOURS[0], alpha=0.8)
        ax.plot(confidence[seen], accuracy[seen], "o", color=COLOURS[1], markersize=3)
        ax.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{cell}\nECE {100 * ece:.2f}%", fontsize=7)
        ax.set_xlabel("confidence", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
    for ax in axes[len(cells) :]:
        ax.set_visible(False)
    fig.suptitle(
        f"Reliability of the chosen configurations on {dataset_label(dataset)} (seeds pooled){title}"
    )
    return _save(fig, path)
