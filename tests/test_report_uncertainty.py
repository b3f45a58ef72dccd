"""Bootstrap intervals and paired comparisons against closed forms (binomial, normal) and hand cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cytotune.report.uncertainty import (
    ChosenTrials,
    bootstrap_accuracy,
    chosen_rows,
    collect_chosen,
    comparison_pairs,
    interval_columns,
    paired_bootstrap,
    paired_comparisons,
    with_comparisons,
)


def test_one_seed_interval_matches_the_binomial_quantiles_of_the_resampled_mean():
    n, hits = 400, 300
    correct = np.zeros((1, n), bool)
    correct[0, :hits] = True
    interval = bootstrap_accuracy(correct, resamples=20000)
    # resampling n images of which a share p is correct: the mean is Binomial(n, p) / n
    low, high = stats.binom.ppf([0.025, 0.975], n, hits / n) / n
    assert interval.estimate == 0.75
    assert interval.low == pytest.approx(low, abs=1.5 / n) and interval.high == pytest.approx(
        high, abs=1.5 / n
    )


def test_seeds_are_resampled_too():
    # two seeds, one right on every image, one wrong on every image: the mean over two drawn seeds is
    # 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4, so the 95% interval is [0, 1] whatever the images
    correct = np.stack([np.ones(50, bool), np.zeros(50, bool)])
    interval = bootstrap_accuracy(correct, resamples=4000)
    assert (interval.estimate, interval.low, interval.high) == (0.5, 0.0, 1.0)
    # identical seeds add nothing: the interval of three copies is that of one
    one = np.random.default_rng(1).random(300) < 0.6
    assert bootstrap_accuracy(np.stack([one] * 3), seed=5).low == pytest.approx(
        bootstrap_accuracy(one[None], seed=5).low, abs=0.01
    )


def test_paired_p_value_matches_the_normal_approximation_of_the_mean_difference():
    rng = np.random.default_rng(2)
    n = 1000
    b = rng.random(n) < 0.70
    a = b.copy()
    a[np.flatnonzero(~b)[:100]] = True  # a right where b is wrong on 100 images, the reverse on 70
    a[np.flatnonzero(b)[:70]] = False
    d = a.astype(float) - b.astype(float)
    # normal approximation with a continuity correction of half the lattice step 1/n of the mean
    z = (abs(d.mean()) - 0.5 / n) / (d.std() / math.sqrt(n))
    expected = 2 * (1 - stats.norm.cdf(z))
    result = paired_bootstrap(a[None], b[None], resamples=20000)
    assert result.difference.estimate == pytest.approx(d.mean())
    assert result.p_value == pytest.approx(expected, abs=0.004)
    half = stats.norm.ppf(0.975) * d.std() / math.sqrt(n)
    assert result.difference.low == pytest.approx(d.mean() - half, abs=0.004)
    assert result.difference.high == pytest.approx(d.mean() + half, abs=0.004)


def test_pairing_removes_the_shared_noise_that_an_unpaired_view_keeps():
    # a beats b on exactly 15 of 1000 images and they agree elsewhere: paired, that is clear evidence
    rng = np.random.default_rng(3)
    b = rng.random(1000) < 0.5
    a = b.copy()
    a[np.flatnonzero(~b)[:15]] = True
    assert paired_bootstrap(a[None], b[None]).p_value < 0.002
    assert paired_bootstrap(b[None], b[None]).p_value == 1.0


def test_paired_bootstrap_refuses_different_test_sets():
    with pytest.raises(ValueError, match="same test images"):
        paired_bootstrap(np.ones((1, 5), bool), np.ones((1, 6), bool))


def best_frame() -> pd.DataFrame:
    rows = [
        ("lora/clip/d/shots=4/rank=2,targets=qv", "lora", "clip", 4.0, 0.8),
        ("linear_probe/clip/d/full", "linear_probe", "clip", np.nan, 0.7),
        ("linear_probe/vit/d/full", "linear_probe", "vit", np.nan, 0.9),
        ("knn/clip/d/full", "knn", "clip", np.nan, 0.6),
        ("knn/clip/d/shots=4", "knn", "clip", 4.0, 0.5),
        ("lora/vit/d/shots=4/rank=2,targets=qv", "lora", "vit", 4.0, 0.85),
    ]
    frame = pd.DataFrame(rows, columns=["cell_key", "method", "backbone", "shots", "val_acc_mean"])
    return frame.assign(dataset="d", level=3, fraction=np.nan, n_seeds=3)


def test_comparisons_pair_methods_on_one_budget_lora_with_the_full_probe_and_backbones_with_the_best():
    pairs = set(comparison_pairs(best_frame()))
    assert pairs == {
        ("method", "lora/clip/d/shots=4/rank=2,targets=qv", "knn/clip/d/shots=4"),
        ("method", "linear_probe/clip/d/full", "knn/clip/d/full"),
        ("lora vs full-data probe", "lora/clip/d/shots=4/rank=2,targets=qv", "linear_probe/clip/d/full"),
        ("lora vs full-data probe", "lora/vit/d/shots=4/rank=2,targets=qv", "linear_probe/vit/d/full"),
        ("backbone", "linear_probe/vit/d/full", "linear_probe/clip/d/full"),
        ("backbone", "lora/vit/d/shots=4/rank=2,targets=qv", "lora/clip/d/shots=4/rank=2,targets=qv"),
    }


def test_chosen_trials_are_read_pooled_and_compared():
    best = best_frame().iloc[[1, 2]].assign(lr=[0.01, 0.1], n_seeds=2)
    frame = pd.DataFrame(
        {
            "cell_key": [best.iloc[0]["cell_key"]] * 3 + [best.iloc[1]["cell_key"]] * 2,
            "status": ["finished"] * 5,
            "lr": [0.01, 0.01, 0.1, 0.1, 0.1],
            "seed": [2, 1, 1, 1, 2],
            "run_id": ["c2", "c1", "other", "v1", "v2"],
        }
    )
    rows = chosen_rows(frame, best, ["lr"])
    assert sorted(rows["run_id"]) == ["c1", "c2", "v1", "v2"]
    bins = {"count": [1.0, 3.0], "confidence": [0.4, 2.4], "correct": [0.0, 3.0]}
    results = {
        "c1": {"test_correct": "1100", "test_reliability": bins, "test_nll": 0.5, "test_ece": 0.1},
        "c2": {"test_correct": "1000", "test_reliability": bins, "test_nll": 0.7, "test_ece": 0.3},
        "v1": {"test_correct": "1111", "test_reliability": bins, "test_nll": 0.1, "test_ece": 0.0},
        "v2": {"test_correct": "1110", "test_reliability": bins, "test_nll": 0.2, "test_ece": 0.2},
    }
    chosen = collect_chosen(rows, results.get)
    clip, vit = best.iloc[0]["cell_key"], best.iloc[1]["cell_key"]
    assert chosen.correct[clip].tolist() == [[1, 1, 0, 0], [1, 0, 0, 0]]  # seed order
    assert chosen.seeds[clip] == (1, 2) and chosen.nll[clip] == pytest.approx(0.6)
    assert chosen.reliability[vit]["count"] == [2.0, 6.0]
    annotated = interval_columns(best, chosen)
    assert annotated["test_ece_mean"].tolist() == pytest.approx([0.2, 0.1])
    assert (annotated["test_acc_ci_low"] <= annotated["test_acc_ci_high"]).all()
    comparisons = paired_comparisons(best, chosen)
    assert comparisons[["kind", "a", "b"]].values.tolist() == [["backbone", vit, clip]]
    assert comparisons["difference"].iloc[0] == pytest.approx(7 / 8 - 3 / 8)
    records = with_comparisons(annotated, comparisons)["comparisons"].tolist()
    assert records[0] == [] and records[1][0]["b"] == clip
    # a trial without per-image results leaves its cell out of intervals and comparisons
    results["v2"] = {"test_acc": 0.75}
    assert vit not in collect_chosen(rows, results.get).correct
    assert paired_comparisons(best, ChosenTrials()).empty


def test_report_and_best_json_carry_intervals_comparisons_and_reliability(tmp_path, mlflow_sqlite_uri):
    import json

    from tracking_fakes import complete_lora_outcome, launch_callback, plans, run_fake_study, write_study
    from typer.testing import CliRunner

    from cytotune.cli import app
    from cytotune.report import build_report

    uri, name = mlflow_sqlite_uri, "uncertain"
    yaml_path = write_study(tmp_path, name)

    run_fake_study(
        launch_callback(yaml_path, uri),
        plans(yaml_path),
        tmp_path / "c",
        outcome=complete_lora_outcome,
    )
    report = build_report(name, uri, tmp_path / "report")
    names = {p.name for p in report.files}
    assert {
        "uncertainty.csv",
        "comparisons.csv",
        "forest_comparisons.png",
        "reliability_synthetic.png",
    } <= names
    table = pd.read_csv(tmp_path / "report" / "uncertainty.csv", dtype=str)
    probe = table[table["cell"] == "linear_probe/tiny_clip/synthetic/full"].iloc[0]
    assert (probe["test acc %"], probe["ECE %"], probe["seeds"]) == ("49.25", "25.75", "2")
    comparisons = pd.read_csv(tmp_path / "report" / "comparisons.csv")
    assert comparisons[["kind", "a", "b"]].values.tolist() == [
        ["lora vs full-data probe", "lora/tiny_clip/synthetic/shots=2/rank=2,targets=qv", probe["cell"]]
    ]
    # Both chosen configurations get 99 and 98 of 200 test images right on seeds 1 and 2, the same images
    # (drawn by seed): the paired difference is exactly 0, and so is every bootstrap resample of it.
    assert comparisons["difference"].iloc[0] == 0.0
    assert comparisons[["ci_low", "ci_high", "p_value"]].values.tolist() == [[0.0, 0.0, 1.0]]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Paired comparisons" in text and "test acc 95% CI" in text

    result = CliRunner().invoke(
        app, ["best", "--experiment", name, "--tracking-uri", uri, "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    rows = {row["cell_key"]: row for row in json.loads(result.stdout)}
    lora = rows["lora/tiny_clip/synthetic/shots=2/rank=2,targets=qv"]
    assert lora["test_acc_ci_low"] <= lora["test_acc_mean"] <= lora["test_acc_ci_high"]
    assert lora["comparisons"][0]["b"] == probe["cell"] and 0 < lora["comparisons"][0]["p_value"] <= 1
    assert rows[probe["cell"]]["test_nll_mean"] == pytest.approx(1 - 0.4925)


def test_levels_are_averaged_over_the_chosen_seeds_and_shown_beside_hierswin():
    from cytotune.report.tables import hierarchy_display
    from cytotune.report.uncertainty import level_columns

    best = pd.DataFrame({"cell_key": ["lora/clip/hicervix/full", "knn/clip/bcfc/full"], "n_seeds": [2, 1]})
    rows = pd.DataFrame(
        {
            "cell_key": ["lora/clip/hicervix/full"] * 2 + ["knn/clip/bcfc/full"],
            "test_acc_level1": [0.9, 0.8, np.nan],
            "test_acc_level2": [0.7, 0.7, np.nan],
            "test_acc_level3": [0.6, 0.5, np.nan],
        }
    )
    levels = level_columns(best, rows)
    assert levels["test_acc_level1_mean"].iloc[0] == pytest.approx(0.85)
    assert levels["test_acc_level1_std"].iloc[0] == pytest.approx(np.std([0.9, 0.8], ddof=1))
    table = hierarchy_display(levels)
    assert table["cell"].tolist() == ["lora/clip/hicervix/full", "HierSwin (reference)"]
    assert table.iloc[0]["level 2 %"] == "70.00 ± 0.00"
    assert table.iloc[0]["mean over levels %"] == f"{100 * (0.85 + 0.7 + 0.55) / 3:.2f}"
    assert table.iloc[1].tolist()[1:] == ["92.08", "–", "78.35", "82.93"]
    assert hierarchy_display(best).empty


def test_many_comparisons_and_cells_are_drawn_on_pages_of_bounded_size(tmp_path):
    from PIL import Image

    from cytotune.report.uncertainty_figures import (
        FOREST_ROWS,
        RELIABILITY_CELLS,
        forest_figures,
        reliability_figures,
    )

    n = 2 * FOREST_ROWS + 1
    comparisons = pd.DataFrame(
        {"kind": "method", "dataset": "d", "a": [f"a{i:03d}" for i in range(n)], "b": "b",
         "difference": 0.01, "ci_low": -0.01, "ci_high": 0.03, "p_value": 0.5}
    )  # fmt: skip
    pages = forest_figures(comparisons, tmp_path / "forest.png")
    assert [p.name for p in pages] == ["forest_1.png", "forest_2.png", "forest_3.png"]
    heights = [Image.open(p).size[1] for p in pages]
    assert heights[0] == heights[1] > heights[2] and heights[0] < 65536 / 20
    assert [p.name for p in forest_figures(comparisons.head(3), tmp_path / "one.png")] == ["one.png"]

    cells = [f"lora/bb/d/shots={i}" for i in range(RELIABILITY_CELLS + 1)]
    best = pd.DataFrame({"cell_key": cells, "dataset": "d"})
    bins = {"count": [2.0, 2.0], "correct": [1.0, 2.0], "confidence": [0.6, 1.8]}
    paths = reliability_figures(best, dict.fromkeys(cells, bins), "d", tmp_path / "rel.png")
    assert [p.name for p in paths] == ["rel_1.png", "rel_2.png"]
    assert reliability_figures(best, {}, "d", tmp_path / "none.png") == []
