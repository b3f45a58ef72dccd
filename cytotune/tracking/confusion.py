"""The test confusion matrix of one trial as a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def confusion_figure(matrix: list[list[int]], classes: list[str], path: Path, title: str = "") -> Path:
    """Write the confusion matrix (rows: true, columns: predicted) with counts, coloured by row share."""
    counts = np.asarray(matrix, dtype=np.int64)
    n = len(classes)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.nan_to_num(counts / counts.sum(axis=1, keepdims=True))
    side = min(max(4.0, 0.55 * n + 2.5), 16.0)
    fig = Figure(figsize=(side + 1.0, side), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of the true class", shrink=0.8)
    ax.set_xticks(range(n), classes, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or "Test confusion matrix", fontsize=10)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                colour = "white" if share[i, j] > 0.5 else "black"
                ax.text(
                    j,
                    i,
                    str(counts[i, j]),
                    ha="center",
                    va="center",
                    color=colour,
                    fontsize=8 if n > 10 else 10,
                )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
