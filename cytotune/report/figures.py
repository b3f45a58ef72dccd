"""The report's figures from validation-selected results (one row per cell, as select_best gives)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from cytotune.report.paper import BACKBONE_LABELS, DATASET_LABELS, backbone_label, dataset_label
from cytotune.tracking.schema import parse_cell_key

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")
LINESTYLES = ("-", "-.", ":", (0, (5, 1)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
HOLLOW_NOTE = "hollow markers: fewer seeds than planned"
METHOD_LABELS = {
    "lora": "LoRA",
    "linear_probe": "linear probe",
    "knn": "kNN",
    "simpleshot": "SimpleShot",
    "zero_shot": "zero-shot",
}
METHOD_MARKERS = {"lora": "o", "linear_probe": "D", "knn": "s", "simpleshot": "^", "zero_shot": "*"}
FULL_DATA_DASHES = {
    "linear_probe": (0, (6, 3)),
    "knn": (0, (1, 2)),
    "simpleshot": (0, (5, 2, 1, 2)),
    "zero_shot": (0, (12, 3)),
}


def _chosen(best: pd.DataFrame) -> pd.DataFrame:
    return best[best["n_seeds"] > 0] if not best.empty else best


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    return frame[name] if name in frame.columns else pd.Series(np.nan, index=frame.index)


def _order(names, known) -> list[str]:
    order = list(known)
    return sorted(set(names), key=lambda n: (order.index(n) if n in order else len(order), n))


def _setting(cell_key: str) -> str:
    """What a cell adds beyond method, backbone, dataset and budget: its block name and LoRA settings."""
    key = parse_cell_key(cell_key)
    block = key.block if key.block not in METHOD_LABELS else ""
    return ", ".join(p for p in (block, key.settings) if p)


def _band(ax, x, mean, std, colour, label, missing, linestyle="-", marker="o") -> None:
    ax.plot(x, mean, color=colour, linestyle=linestyle, linewidth=1.8, label=label)
    for xi, yi, hollow in zip(x, mean, missing, strict=True):
        ax.plot(
            [xi],
            [yi],
            marker=marker,
            markersize=6,
            color=colour,
            markerfacecolor="white" if hollow else colour,
        )
    low, high = mean - np.nan_to_num(std), mean + np.nan_to_num(std)
    ax.fill_between(x, low, high, color=colour, alpha=0.18, linewidth=0)


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    return path


def _grid(n: int) -> tuple[int, int]:
    cols = 1 if n == 1 else (2 if n in (2, 4) else 3)
    return math.ceil(n / cols), cols


def shots_figure(best: pd.DataFrame, path: Path) -> Path | None:
    """Figure 1: test accuracy (%) vs shots per class, a panel per dataset, a line per backbone and few-shot
    method (LoRA, and any probe, knn or simpleshot few-shot cells; marker by method) with a band of ± std over
    seeds; the backbone's full-data linear probe as a dashed horizontal line, full-data knn dotted,
    simpleshot dash-dotted and zero-shot in long dashes. None when the results have no few-shot cell."""
    chosen = _chosen(best)
    if chosen.empty:
        return None
    shots = chosen[_column(chosen, "shots").notna()]
    if shots.empty:
        return None
    probe = chosen[
        chosen["method"].isin(list(FULL_DATA_DASHES))
        & _column(chosen, "shots").isna()
        & _column(chosen, "fraction").isna()
    ]
    datasets = _order(shots["dataset"], DATASET_LABELS)
    backbones = _order(pd.concat([shots["backbone"], probe["backbone"]]), BACKBONE_LABELS)
    colour = {b: COLOURS[i % len(COLOURS)] for i, b in enumerate(backbones)}
    style = {}  # line style per setting, counted within each method (each method's first setting is solid)
    for method, cells in shots.groupby("method"):
        for i, setting in enumerate(_order(cells["cell_key"].map(_setting), ())):
            style[(method, setting)] = LINESTYLES[i % len(LINESTYLES)]
    rows, cols = _grid(len(datasets))
    fig = Figure(figsize=(max(8.0, 5.2 * cols), 4.0 * rows + 1.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    handles: dict[tuple[int, int, str], Line2D] = {}
    for ax, dataset in zip(axes, datasets, strict=False):
        here = shots[shots["dataset"] == dataset].assign(_setting=lambda f: f["cell_key"].map(_setting))
        for (backbone, method, setting), line in here.groupby(["backbone", "method", "_setting"], sort=False):
            line = line.sort_values("shots")
            name = METHOD_LABELS.get(method, method)
            several = shots[shots["method"] == method]["cell_key"].map(_setting).nunique() > 1
            label = f"{backbone_label(backbone)} + {name}" + (f" ({setting})" if several else "")
            marker = METHOD_MARKERS.get(method, "o")
            _band(
                ax,
                line["shots"].to_numpy(float),
                100 * line["test_acc_mean"].to_numpy(float),
                100 * line["test_acc_std"].to_numpy(float),
                colour[backbone],
                label,
                line["missing_seeds"].to_numpy(bool),
                style[(method, setting)],
                marker,
            )
            key = (backbones.index(backbone), 0, label)
            handles[key] = Line2D(
                [], [], color=colour[backbone], linestyle=style[(method, setting)], marker=marker
            )
        lines = probe[probe["dataset"] == dataset]
        level = (100 * lines["test_acc_mean"]).round(2)
        for (_, row), y in zip(lines.iterrows(), level, strict=True):
            name = METHOD_LABELS[row["method"]]
            label = f"{backbone_label(row['backbone'])} {name}" + (
                " (full)" if row["method"] not in ("linear_probe", "zero_shot") else ""
            )
            index = backbones.index(row["backbone"])
            equal = list(lines.index[level == y])  # equal lines get interleaved dashes, so each stays visible
            own = FULL_DATA_DASHES[row["method"]]
            dashes = (6 * equal.index(row.name), (6, 6 * len(equal) - 6)) if len(equal) > 1 else own
            ax.axhline(y, color=colour[row["backbone"]], linestyle=dashes, linewidth=1.4)
            order = 1 + list(FULL_DATA_DASHES).index(row["method"])
            handles[(index, order, label)] = Line2D([], [], color=colour[row["backbone"]], linestyle=own)
        ticks = sorted(here["shots"].unique())
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_title(dataset_label(dataset))
        ax.set_xlabel("shots per class")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in axes[len(datasets) :]:
        ax.set_visible(False)
    title = "Figure 1. Few-shot: test accuracy vs shots per class (mean ± std over seeds)"
    full = [style for method, style in FULL_STYLE_NAMES.items() if (probe["method"] == method).any()]
    title += (
        "\n"
        + ", ".join(full or ["no full-data baseline"])
        + " on the full train split"
        + (f"; {HOLLOW_NOTE}" if shots["missing_seeds"].any() else "")
    )
    fig.suptitle(title, fontsize=12)
    ordered = dict(sorted(handles.items(), key=lambda item: item[0][:2]))
    per_backbone = len({key[0] for key in ordered})
    columns = per_backbone if any(key[1] for key in ordered) and per_backbone <= 6 else 3
    fig.legend(
        list(ordered.values()),
        [key[2] for key in ordered],
        loc="outside lower center",
        ncol=columns,
        fontsize=9,
        frameon=False,
    )
    return _save(fig, path)


FULL_STYLE_NAMES = {
    "linear_probe": "dashed: linear probe",
    "knn": "dotted: kNN",
    "simpleshot": "dash-dot: SimpleShot",
    "zero_shot": "long dashes: zero-shot",
}


def _legend(fig: Figure, handles: dict[str, Line2D], hollow: bool) -> None:
    if hollow:
        handles = {
            **handles,
            HOLLOW_NOTE: Line2D([], [], color="grey", marker="o", markerfacecolor="white", ls=""),
        }
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="outside lower center",
        ncol=min(3, max(1, len(handles))),
        fontsize=9,
        frameon=False,
    )


def fraction_figure(
    best: pd.DataFrame, path: Path, reference: tuple[str, float] | None = ("HierSwin", 78.35)
) -> Path | None:
    """Figure 2: test accuracy (%) vs the share of the training split used, a line per backbone and dataset
    with a band of ± std over seeds, and a horizontal reference line (label, accuracy %). None when the
    results have no data-fraction cell."""
    chosen = _chosen(best)
    if chosen.empty:
        return None
    frac = chosen[_column(chosen, "fraction").notna()]
    if frac.empty:
        return None
    frac = frac.assign(_setting=frac["cell_key"].map(_setting))
    fig = Figure(figsize=(7.5, 5.2), layout="constrained")
    ax = fig.add_subplot()
    handles: dict[str, Line2D] = {}
    groups = list(frac.groupby(["backbone", "dataset", "method", "_setting"], sort=True))
    for i, ((backbone, dataset, method, setting), line) in enumerate(groups):
        line = line.sort_values("fraction")
        method_label = METHOD_LABELS.get(method, method)
        label = f"{backbone_label(backbone)} + {method_label} on {dataset_label(dataset)}"
        label += f" ({setting})" if setting else ""
        colour = COLOURS[i % len(COLOURS)]
        _band(
            ax,
            100 * line["fraction"].to_numpy(float),
            100 * line["test_acc_mean"].to_numpy(float),
            100 * line["test_acc_std"].to_numpy(float),
            colour,
            label,
            line["missing_seeds"].to_numpy(bool),
        )
        handles[label] = Line2D([], [], color=colour, marker="o")
    if reference is not None:
        name, accuracy = reference
        ax.axhline(accuracy, color="black", linestyle=":", linewidth=1.5)
        ax.annotate(
            f"{name} {accuracy:.2f}%",
            (0.01, accuracy),
            xycoords=("axes fraction", "data"),
            xytext=(0, 4),
            textcoords="offset points",
            fontsize=9,
        )
        handles[f"{name} (reference) {accuracy:.2f}%"] = Line2D([], [], color="black", linestyle=":")
    ticks = sorted(100 * frac["fraction"].unique())
    step = max(1, math.ceil(len(ticks) / 10))
    ax.set_xticks(ticks[::step], [f"{t:g}" for t in ticks[::step]])
    ax.set_xlabel("training data used (% of the train split)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Figure 2. Test accuracy vs training data fraction (mean ± std over seeds)", fontsize=12)
    ax.grid(alpha=0.3)
    _legend(fig, handles, frac["missing_seeds"].any())
    return _save(fig, path)


def _budget(row: pd.Series) -> tuple[int, float, str]:
    """Orders cells by data budget (full train split > fraction > shots) and names the budget."""
    fraction, shots = row.get("fraction", np.nan), row.get("shots", np.nan)
    if pd.notna(fraction):
        return 1, float(fraction), f"{100 * fraction:g}% of train"
    if pd.notna(shots):
        return 0, float(shots), f"{shots:g} shots"
    return 2, 0.0, "full train"


def _label_points(ax, labels: dict[tuple[float, float], str], fontsize: float = 8) -> None:
    """Annotate points, moving a label up or down (in steps of a line) until it overlaps no earlier one."""
    ax.autoscale_view()
    scale = ax.figure.dpi / 72
    placed: list[tuple[float, float, float, float]] = []
    for (x, y), text in sorted(labels.items(), key=lambda item: (-item[0][1], item[0][0])):
        px, py = ax.transData.transform((x, y))
        width, height = 0.6 * fontsize * len(text) * scale, 1.3 * fontsize * scale
        for step in (0, -1, 1, -2, 2, -3, 3, -4, 4):
            dy = (4 + step * 1.3 * fontsize) * scale
            box = (px + 6 * scale, py + dy, px + 6 * scale + width, py + dy + height)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
        placed.append(box)
        ax.annotate(text, (x, y), xytext=(6, dy / scale), textcoords="offset points", fontsize=fontsize)


def params_figure(best: pd.DataFrame, path: Path) -> Path | None:
    """Trainable parameters (log scale) vs test accuracy (%), a panel per dataset: per method, backbone and
    setting, the cell with the largest data budget, colour per method, error bars ± std over seeds. None when
    no cell has a parameter count."""
    chosen = _chosen(best)
    if chosen.empty or "trainable_params_mean" not in chosen.columns:
        return None
    points = chosen[chosen["trainable_params_mean"].notna() & (chosen["trainable_params_mean"] > 0)]
    if points.empty:
        return None
    handles: dict[tuple[int, str], Line2D] = {}
    points = points.assign(
        _setting=points["cell_key"].map(_setting),
        _budget=[_budget(row) for _, row in points.iterrows()],
    )
    largest = points.sort_values("_budget").groupby(["dataset", "method", "backbone", "_setting"]).tail(1)
    methods = _order(largest["method"], ("linear_probe", "lora", "knn", "simpleshot", "zero_shot"))
    datasets = _order(largest["dataset"], DATASET_LABELS)
    rows, cols = _grid(len(datasets))
    fig = Figure(figsize=(max(8.0, 5.6 * cols), 4.2 * rows + 1.0), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, dataset in zip(axes, datasets, strict=False):
        here = largest[largest["dataset"] == dataset]
        order = _order(here["backbone"], BACKBONE_LABELS)
        here = here.sort_values("backbone", key=lambda names: names.map(order.index), kind="stable")
        labels: dict[tuple[float, float, str], list[str]] = {}
        for _, row in here.iterrows():
            colour = COLOURS[methods.index(row["method"]) % len(COLOURS)]
            x, y = row["trainable_params_mean"], 100 * row["test_acc_mean"]
            std = 0.0 if pd.isna(row["test_acc_std"]) else 100 * row["test_acc_std"]
            ax.errorbar([x], [y], yerr=[std], fmt="o", color=colour, markersize=7, capsize=3)
            labels.setdefault((x, round(y, 1), row["_budget"][2]), []).append(backbone_label(row["backbone"]))
            label = METHOD_LABELS.get(row["method"], row["method"])
            handles[(methods.index(row["method"]), label)] = Line2D([], [], color=colour, marker="o", ls="")
        ax.set_xscale("log")
        ax.margins(x=0.25, y=0.15)
        _label_points(ax, {(x, y): f"{', '.join(dict.fromkeys(n))} ({b})" for (x, y, b), n in labels.items()})
        ax.set_title(dataset_label(dataset))
        ax.set_xlabel("trainable parameters (log scale)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3, which="major")
    for ax in axes[len(datasets) :]:
        ax.set_visible(False)
    fig.suptitle("Trainable parameters vs test accuracy\n(largest data budget of each method and backbone)")
    _legend(fig, {label: handle for (_, label), handle in sorted(handles.items())}, False)
    return _save(fig, path)
