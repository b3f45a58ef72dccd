"""Tables of validation-selected results: the best-config table, Table 1 (linear probe) beside the paper."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from cytotune.config import FEATURE_METHODS
from cytotune.errors import CytotuneError
from cytotune.report.paper import (
    BACKBONE_LABELS,
    DATASET_LABELS,
    HIERSWIN_LEVELS,
    HIERSWIN_MEAN_OF_LEVELS,
    backbone_label,
    dataset_label,
    paper_linear_probe,
)
from cytotune.tracking.schema import parse_cell_key
from cytotune.tracking.selection import NO_COMPLETE

BEST_FORMATS = ("table", "csv", "json", "markdown")
MISSING_MARK = "†"


def percent(mean: float, std: float | None = None, digits: int = 2) -> str:
    """An accuracy in [0, 1] as a percentage, with ± std when known ("–" for nothing)."""
    if mean is None or _nan(mean):
        return "–"
    text = f"{100 * mean:.{digits}f}"
    return text if std is None or _nan(std) else f"{text} ± {100 * std:.{digits}f}"


def _nan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _value(value: object) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:g}"
    return str(value)


def chosen_text(row: pd.Series | dict, searched: Sequence[str]) -> str:
    """The chosen searched values of a cell, as "lr=0.001, lora.rank=8" (fields the cell's method does not
    use, NaN there, left out: a knn cell shows k, not lr; a simpleshot cell searches nothing)."""
    shown = [name for name in searched if not _nan(row[name])]
    return ", ".join(f"{name}={_value(row[name])}" for name in shown) or "nothing searched"


def best_display(best: pd.DataFrame, searched: Sequence[str]) -> pd.DataFrame:
    """The best-config table for people: cell, chosen values, val and test accuracy (%), the chosen
    configuration's seeds as n/N, and a note (a cell where no configuration finished on every seed, or how
    many configurations finished on every seed out of those tried)."""
    rows = []
    for _, row in best.iterrows():
        chosen = row["n_seeds"] > 0 and not row["missing_seeds"]
        rows.append(
            {
                "cell": row["cell_key"],
                "chosen": chosen_text(row, searched) if chosen else "–",
                "val acc %": percent(row["val_acc_mean"]),
                "test acc % (mean ± std)": percent(row["test_acc_mean"], row["test_acc_std"]),
                "seeds": f"{row['n_seeds']}/{row['expected_seeds']}",
                "note": _best_note(row, chosen),
            }
        )
        if "test_acc_ci_low" in best.columns:
            rows[-1][CI_COLUMN] = interval_text(row["test_acc_ci_low"], row["test_acc_ci_high"])
    columns = ["cell", "chosen", "val acc %", "test acc % (mean ± std)", "seeds", "note"]
    if "test_acc_ci_low" in best.columns:
        columns.insert(4, CI_COLUMN)
    return pd.DataFrame(rows, columns=columns)


def _best_note(row: pd.Series, chosen: bool) -> str:
    tried = row.get("n_configurations")
    if not chosen:
        return NO_COMPLETE + ("" if tried is None or _nan(tried) else f" ({int(tried)} tried)")
    if tried is None or _nan(tried):
        return ""
    return f"{int(row['n_candidates'])} of {int(tried)} configurations finished every seed"


CI_COLUMN = "test acc 95% CI"


def interval_text(low: float, high: float, scale: float = 100, digits: int = 2) -> str:
    """An interval as "[low, high]" (scaled, e.g. to %), "–" when unknown."""
    if _nan(float(low)) or _nan(float(high)):
        return "–"
    return f"[{scale * low:.{digits}f}, {scale * high:.{digits}f}]"


def uncertainty_display(best: pd.DataFrame) -> pd.DataFrame:
    """Per cell with a chosen configuration: test accuracy (%), its bootstrap interval over seeds and test
    images, mean test NLL and ECE (%) over seeds, seeds and test images."""
    rows = []
    for _, row in best[best["n_seeds"] > 0].iterrows():
        images = row.get("n_test_images", math.nan)
        rows.append(
            {
                "cell": row["cell_key"],
                "test acc %": percent(row["test_acc_mean"]),
                CI_COLUMN: interval_text(row["test_acc_ci_low"], row["test_acc_ci_high"]),
                "NLL": "–" if _nan(float(row["test_nll_mean"])) else f"{row['test_nll_mean']:.3f}",
                "ECE %": percent(row["test_ece_mean"]),
                "seeds": int(row["n_seeds"]),
                "test images": "–" if _nan(float(images)) else int(images),
            }
        )
    columns = ["cell", "test acc %", CI_COLUMN, "NLL", "ECE %", "seeds", "test images"]
    return pd.DataFrame(rows, columns=columns)


def hierarchy_display(best: pd.DataFrame) -> pd.DataFrame:
    """Per cell scored at several class levels (HiCervix): test accuracy (%) at each level, mean ± std over
    the chosen configuration's seeds, the mean over levels, and HierSwin's figures as a last row."""
    columns = ["cell", "level 1 %", "level 2 %", "level 3 %", "mean over levels %"]
    if "test_acc_level1_mean" not in best.columns:
        return pd.DataFrame(columns=columns)
    rows = []
    for _, row in best[best["test_acc_level1_mean"].notna()].iterrows():
        means = [row.get(f"test_acc_level{n}_mean", math.nan) for n in (1, 2, 3)]
        known = [m for m in means if not _nan(float(m))]
        shown = {
            f"level {n} %": percent(mean, row.get(f"test_acc_level{n}_std", math.nan))
            for n, mean in zip((1, 2, 3), means, strict=True)
        }
        mean = sum(known) / len(known) if len(known) == 3 else math.nan
        rows.append({"cell": row["cell_key"], **shown, "mean over levels %": percent(mean)})
    if rows:
        reference = {
            f"level {n} %": f"{HIERSWIN_LEVELS[n]:.2f}" if n in HIERSWIN_LEVELS else "–" for n in (1, 2, 3)
        }
        rows.append(
            {
                "cell": "HierSwin (reference)",
                **reference,
                "mean over levels %": f"{HIERSWIN_MEAN_OF_LEVELS:.2f}",
            }
        )
    return pd.DataFrame(rows, columns=columns)


def comparison_display(comparisons: pd.DataFrame) -> pd.DataFrame:
    """Paired comparisons for people: kind, cells a and b, their accuracies, difference a - b (points)
    with its interval, and the p-value."""
    rows = [
        {
            "kind": row["kind"],
            "a": row["a"],
            "b": row["b"],
            "a %": percent(row["a_acc"]),
            "b %": percent(row["b_acc"]),
            "a - b (points)": f"{100 * row['difference']:+.2f}",
            "95% CI": interval_text(row["ci_low"], row["ci_high"]),
            "p": f"{row['p_value']:.3g}",
        }
        for _, row in comparisons.iterrows()
    ]
    return pd.DataFrame(rows, columns=["kind", "a", "b", "a %", "b %", "a - b (points)", "95% CI", "p"])


def best_text(best: pd.DataFrame, searched: Sequence[str], fmt: str = "table") -> str:
    """The best configuration per cell as text: an aligned table, markdown, or every column as CSV or JSON."""
    if fmt == "csv":
        return best.to_csv(index=False)
    if fmt == "json":
        return best.to_json(orient="records", indent=1)
    if fmt == "markdown":
        return markdown(best_display(best, searched))
    if fmt == "table":
        return plain(best_display(best, searched))
    raise CytotuneError(f"--format {fmt!r}: unknown format; expected one of: {', '.join(BEST_FORMATS)}")


def markdown(frame: pd.DataFrame) -> str:
    """A DataFrame as a GitHub markdown table (index ignored)."""
    header = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines) + "\n"


def plain(frame: pd.DataFrame) -> str:
    """A DataFrame as an aligned text table (index ignored)."""
    cells = [[str(c) for c in frame.columns]] + [
        [str(v) for v in row] for row in frame.itertuples(index=False)
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(frame.columns))]
    lines = [
        "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    ]
    return "\n".join(lines) + "\n"


def linear_probe_table(best: pd.DataFrame) -> pd.DataFrame:
    """Table 1 in long form: per cell on the full train split of a method on the cached features (linear
    probe, knn, simpleshot), the selected test accuracy (%) mean and std over seeds, seeds, the chosen lr,
    and the paper's value where a linear-probe cell matches."""
    if best.empty or "method" not in best.columns:
        return pd.DataFrame(columns=_TABLE1_COLUMNS)
    probe = best[best["method"].isin(FEATURE_METHODS)]
    for budget in ("shots", "fraction"):
        if budget in probe.columns:
            probe = probe[probe[budget].isna()]
    rows = []
    for _, row in probe.iterrows():
        level = int(row["level"]) if "level" in row and not _nan(row["level"]) else None
        paper = paper_linear_probe(row["backbone"], row["dataset"], level)
        paper = paper if row["method"] == "linear_probe" else None
        mean = 100 * row["test_acc_mean"]
        rows.append(
            {
                "dataset": row["dataset"],
                "backbone": row["backbone"],
                "block": parse_cell_key(row["cell_key"]).block,
                "level": level,
                "lr": row.get("lr"),
                "test_acc": mean,
                "test_acc_std": 100 * row["test_acc_std"],
                "n_seeds": row["n_seeds"],
                "expected_seeds": row["expected_seeds"],
                "missing_seeds": row["missing_seeds"],
                "paper": paper,
                "difference": None if paper is None or _nan(mean) else mean - paper,
            }
        )
    return pd.DataFrame(rows, columns=_TABLE1_COLUMNS)


_TABLE1_COLUMNS = [
    "dataset",
    "backbone",
    "block",
    "level",
    "lr",
    "test_acc",
    "test_acc_std",
    "n_seeds",
    "expected_seeds",
    "missing_seeds",
    "paper",
    "difference",
]


def _order(names, known) -> list[str]:
    order = list(known)
    return sorted(set(names), key=lambda n: (order.index(n) if n in order else len(order), n))


def _grid(table: pd.DataFrame, cell) -> tuple[list[str], list[str], dict]:
    columns = [_column(row) for _, row in table.iterrows()]
    table = table.assign(_column=columns)
    datasets = _order(table["dataset"], DATASET_LABELS)
    backbones = _order(table["_column"], BACKBONE_LABELS)
    values = {(row["dataset"], row["_column"]): cell(row) for _, row in table.iterrows()}
    return datasets, backbones, values


def _column(row: pd.Series) -> str:
    return row["backbone"] if row["block"] == "linear_probe" else f"{row['backbone']} ({row['block']})"


def _number(value: float, std: float) -> str:
    if _nan(value):
        return "–"
    return f"{value:.2f}" if _nan(std) else f"{value:.2f} ± {std:.2f}"


def table1_markdown(table: pd.DataFrame) -> str:
    """Table 1 as markdown: datasets x backbones, ours mean ± std (paper's value in parentheses)."""

    def cell(row: pd.Series) -> str:
        text = _number(row["test_acc"], row["test_acc_std"]) + (MISSING_MARK if row["missing_seeds"] else "")
        return text if row["paper"] is None or _nan(row["paper"]) else f"{text} (paper {row['paper']:.2f})"

    datasets, backbones, values = _grid(table, cell)
    frame = pd.DataFrame(
        [[dataset_label(d)] + [values.get((d, b), "") for b in backbones] for d in datasets],
        columns=["dataset", *(_header(b) for b in backbones)],
    )
    return markdown(frame) + _footnote(table)


def _header(column: str) -> str:
    backbone, _, rest = column.partition(" ")
    return f"{backbone_label(backbone)} {rest}".strip()


def _footnote(table: pd.DataFrame) -> str:
    note = (
        "\nLinear probe, test accuracy (%) of the learning rate chosen on validation, mean ± std over seeds; "
        "test accuracy at each trial's best-validation checkpoint (the paper's code took the last iteration)."
    )
    if (table["block"] != "linear_probe").any():
        note += (
            " Columns with a block name in parentheses (knn, simpleshot, ...) are that block on the same "
            "cached features (knn: k chosen on validation)."
        )
    if table["missing_seeds"].any():
        note += f" {MISSING_MARK} no configuration finished on every seed."
    return note + "\n"


def table1_latex(table: pd.DataFrame) -> str:
    """Table 1 as a LaTeX tabular (booktabs): ours $mean \\pm std$ with the paper's value in parentheses."""

    def cell(row: pd.Series) -> str:
        if _nan(row["test_acc"]):
            return "--"
        std = "" if _nan(row["test_acc_std"]) else f" \\pm {row['test_acc_std']:.2f}"
        text = f"${row['test_acc']:.2f}{std}$" + ("$^\\dagger$" if row["missing_seeds"] else "")
        return text if row["paper"] is None or _nan(row["paper"]) else f"{text} ({row['paper']:.2f})"

    datasets, backbones, values = _grid(table, cell)
    lines = [
        "\\begin{tabular}{l" + "c" * len(backbones) + "}",
        "\\toprule",
        " & ".join(["Dataset", *(_latex(_header(b)) for b in backbones)]) + " \\\\",
        "\\midrule",
    ]
    for d in datasets:
        lines.append(
            " & ".join([_latex(dataset_label(d)), *(values.get((d, b), "") for b in backbones)]) + " \\\\"
        )
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def _latex(text: str) -> str:
    for char in ("&", "%", "$", "#", "_", "{", "}"):
        text = text.replace(char, "\\" + char)
    return text
