"""Runs of methods that search nothing (simpleshot) or search k instead of lr (knn) read back and selected."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cytotune.report.tables import best_text
from cytotune.tracking.runs import searched_fields
from cytotune.tracking.selection import select_best


def run(cell: str, seed: int, val: float, test: float, searched: str = "", **params) -> dict:
    return {
        "cell_key": cell,
        "method": cell.split("/")[0],
        "seed": seed,
        "status": "finished",
        "searched": searched,
        "best_val_acc": val,
        "test_acc": test,
        **params,
    }


def test_a_study_of_simpleshot_alone_searches_nothing_and_is_still_selected():
    frame = pd.DataFrame([run("simpleshot/uni/bcfc/full", s, 0.8, t) for s, t in ((1, 0.7), (2, 0.9))])
    assert searched_fields(frame) == ()
    best = select_best(frame, searched_fields(frame))
    assert best.iloc[0]["test_acc_mean"] == pytest.approx(0.8) and best.iloc[0]["n_seeds"] == 2
    assert "nothing searched" in best_text(best, ())


def test_knn_beside_the_probe_searches_k_where_the_probe_searches_lr():
    frame = pd.DataFrame(
        [
            run("knn/uni/bcfc/full", 1, 0.6, 0.5, "k", k=1, lr=np.nan),
            run("knn/uni/bcfc/full", 1, 0.7, 0.4, "k", k=5, lr=np.nan),
            run("linear_probe/uni/bcfc/full", 1, 0.9, 0.8, "lr", k=np.nan, lr=0.01),
        ]
    )
    searched = searched_fields(frame)
    assert searched == ("lr", "k")
    best = select_best(frame, searched).set_index("cell_key")
    assert best.loc["knn/uni/bcfc/full", "k"] == 5 and best.loc["knn/uni/bcfc/full", "test_acc_mean"] == 0.4
    assert best.loc["linear_probe/uni/bcfc/full", "lr"] == 0.01
    text = best_text(best.reset_index(), searched)
    assert "k=5" in text and "lr=0.01" in text and "lr=–" not in text
