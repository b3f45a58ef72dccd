"""Tables and figures of the report from hand-built validation-selected results (paper-sized, no MLflow)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cytotune.errors import CytotuneError
from cytotune.report import (
    best_text,
    fraction_figure,
    linear_probe_table,
    params_figure,
    shots_figure,
    table1_latex,
    table1_markdown,
)

BACKBONES = ("clip_vit_b16", "quilt_b16", "biomedclip", "uni", "vit_b16")
DATASETS = ("bcfc", "mlcc", "sipakmed", "hicervix")
BASE = {"bcfc": 0.95, "mlcc": 0.94, "sipakmed": 0.9, "hicervix": 0.55}


def cell(method, backbone, dataset, budget, acc, std=0.01, n_seeds=3, params=1000.0, **fields):
    key = f"{method}/{backbone}/{dataset}/{budget}" + ("/rank=2,targets=qv" if method == "lora" else "")
    return {
        "cell_key": key,
        "method": method,
        "backbone": backbone,
        "dataset": dataset,
        "level": 3,
        "shots": fields.get("shots", np.nan),
        "fraction": fields.get("fraction", np.nan),
        "lr": 1e-3,
        "val_acc_mean": acc + 0.01,
        "test_acc_mean": acc,
        "test_acc_std": std,
        "n_seeds": n_seeds,
        "expected_seeds": 3,
        "missing_seeds": n_seeds < 3,
        "seeds": tuple(range(1, n_seeds + 1)),
        "n_candidates": 5,
        "trainable_params_mean": params,
    }


@pytest.fixture(scope="module")
def best() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for b, backbone in enumerate(BACKBONES):
        for dataset in DATASETS:
            probe = BASE[dataset] - 0.01 * b
            rows.append(cell("linear_probe", backbone, dataset, "full", probe, params=768 * 4.0))
            for shots in (1, 2, 4, 8, 16, 50):
                acc = min(0.99, BASE[dataset] - 0.25 + 0.07 * np.log2(shots) - 0.01 * b)
                rows.append(
                    cell(
                        "lora",
                        backbone,
                        dataset,
                        f"shots={shots}",
                        acc,
                        std=float(rng.uniform(0.005, 0.03)),
                        n_seeds=2 if (shots == 50 and b == 0) else 3,
                        params=73728.0,
                        shots=shots,
                    )
                )
    for fraction in np.arange(1, 21) / 20:
        acc = 0.62 + 0.18 * np.sqrt(fraction)
        rows.append(
            cell(
                "lora",
                "clip_vit_l14",
                "hicervix",
                f"fraction={fraction!r}",
                acc,
                params=3145728.0,
                fraction=fraction,
            )
        )
    rows.append(cell("linear_probe", "tiny_clip", "synthetic", "full", 0.5, n_seeds=0))
    frame = pd.DataFrame(rows)
    frame.loc[frame["n_seeds"] == 0, ["test_acc_mean", "test_acc_std", "val_acc_mean", "lr"]] = np.nan
    return frame


def test_table1_matches_paper_cells_and_flags_missing(best):
    table = linear_probe_table(best)
    assert len(table) == len(BACKBONES) * len(DATASETS) + 1
    uni = table[(table["backbone"] == "uni") & (table["dataset"] == "sipakmed")].iloc[0]
    assert uni["paper"] == 93.33 and uni["test_acc"] == pytest.approx(100 * (0.9 - 0.03))
    assert uni["difference"] == pytest.approx(uni["test_acc"] - 93.33)
    assert pd.isna(table[table["backbone"] == "tiny_clip"].iloc[0]["paper"])
    text = table1_markdown(table)
    assert "| SIPaKMeD |" in text and "87.00 ± 1.00 (paper 93.33)" in text
    assert text.splitlines()[0].startswith("| dataset | CLIP | QUILT | BiomedCLIP | UNI | ViT | tiny_clip |")
    latex = table1_latex(table)
    assert "\\begin{tabular}{lcccccc}" in latex and "$87.00 \\pm 1.00$ (93.33)" in latex
    assert "tiny\\_clip" in latex


def test_best_text_formats(best):
    rows = best.head(3)
    records = json.loads(best_text(rows, ["lr"], "json"))
    assert [r["cell_key"] for r in records] == list(rows["cell_key"])
    assert records[0]["seeds"] == [1, 2, 3]
    assert best_text(rows, ["lr"], "csv").splitlines()[0].startswith("cell_key,method,backbone")
    table = best_text(rows, ["lr"], "table")
    assert "lr=0.001" in table and "95.00 ± 1.00" in table and "3/3" in table
    assert best_text(rows, ["lr"], "markdown").startswith("| cell | chosen |")
    with pytest.raises(CytotuneError, match="expected one of: table, csv, json, markdown"):
        best_text(rows, ["lr"], "xml")


def test_figures_are_written(best, tmp_path):
    one = shots_figure(best, tmp_path / "figure1_shots.png")
    two = fraction_figure(best, tmp_path / "figure2_fraction.png", ("HierSwin", 78.35))
    three = params_figure(best, tmp_path / "params_vs_accuracy.png")
    for path in (one, two, three):
        assert path is not None and path.stat().st_size > 10_000
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    probe_only = best[best["method"] == "linear_probe"]
    assert shots_figure(probe_only, tmp_path / "none.png") is None
    assert fraction_figure(probe_only, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def with_baselines(best: pd.DataFrame) -> pd.DataFrame:
    rows = [
        cell("knn", "clip_vit_b16", "bcfc", "full", 0.91, params=0.0),
        cell("simpleshot", "clip_vit_b16", "bcfc", "full", 0.89, params=0.0),
        *(
            cell("knn", "clip_vit_b16", "bcfc", f"shots={k}", 0.6 + 0.05 * i, params=0.0, shots=k)
            for i, k in enumerate((1, 2, 4))
        ),
    ]
    for row in rows:
        row["lr"] = np.nan
    return pd.concat([best, pd.DataFrame(rows)], ignore_index=True)


def test_table1_puts_full_data_baselines_beside_the_probe_without_paper_values(best):
    table = linear_probe_table(with_baselines(best))
    knn = table[table["block"] == "knn"]
    assert len(knn) == 1 and pd.isna(knn.iloc[0]["paper"]) and knn.iloc[0]["test_acc"] == pytest.approx(91.0)
    text = table1_markdown(table)
    header = text.splitlines()[0]
    assert "| CLIP | CLIP (knn) | CLIP (simpleshot) |" not in header  # the probe columns come first
    assert "CLIP (knn)" in header and "CLIP (simpleshot)" in header
    assert "| 91.00 ± 1.00 |" in text and "block name in parentheses" in text


def test_figure1_draws_few_shot_baselines_and_full_data_baselines(best, tmp_path, monkeypatch):
    from cytotune.report import figures

    drawn = {}
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.setdefault("fig", fig) and path)
    shots_figure(with_baselines(best), tmp_path / "f.png")
    labels = {text.get_text() for legend in drawn["fig"].legends for text in legend.get_texts()}
    assert {
        "CLIP + LoRA",
        "CLIP + kNN",
        "CLIP linear probe",
        "CLIP kNN (full)",
        "CLIP SimpleShot (full)",
    } <= labels
    assert "dotted: kNN" in drawn["fig"]._suptitle.get_text()


def test_chosen_values_leave_out_fields_the_method_does_not_use():
    from cytotune.report.tables import chosen_text

    assert chosen_text({"lr": np.nan, "k": 5.0}, ["lr", "k"]) == "k=5"
    assert chosen_text({"lr": 0.001, "k": np.nan}, ["lr", "k"]) == "lr=0.001"
    assert chosen_text({"lr": np.nan, "k": np.nan}, ["lr", "k"]) == "nothing searched"
