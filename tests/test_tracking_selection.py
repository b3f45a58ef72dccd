"""select_best on hand-built runs: ties, configurations short of a seed, failed and stopped runs, several
searched fields."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from cytotune.errors import CytotuneError
from cytotune.tracking.runs import filter_frame, parse_where
from cytotune.tracking.selection import select_best


def trial(cell, lr, seed, val, test, status="finished", **extra):
    backbone, dataset = cell.split("/")[1:3]
    return {
        "cell_key": cell,
        "method": cell.split("/")[0],
        "backbone": backbone,
        "dataset": dataset,
        "lr": lr,
        "seed": seed,
        "best_val_acc": val,
        "test_acc": test,
        "status": status,
        **extra,
    }


CELL = "linear_probe/uni/sipakmed/full"


def test_picks_highest_mean_validation_and_reports_its_test_mean_std():
    frame = pd.DataFrame(
        [
            trial(CELL, 1e-3, 1, 0.80, 0.70),
            trial(CELL, 1e-3, 2, 0.82, 0.72),
            trial(CELL, 1e-2, 1, 0.90, 0.60),
            trial(CELL, 1e-2, 2, 0.70, 0.90),
        ]
    )
    best = select_best(frame).iloc[0]
    assert best["lr"] == 1e-3
    assert best["val_acc_mean"] == pytest.approx(0.81)
    assert best["test_acc_mean"] == pytest.approx(0.71)
    assert best["test_acc_std"] == pytest.approx(pd.Series([0.70, 0.72]).std())
    assert best["n_seeds"] == 2 and best["seeds"] == (1, 2)
    assert best["n_candidates"] == 2
    assert not best["missing_seeds"]
    assert (best["backbone"], best["dataset"], best["method"]) == ("uni", "sipakmed", "linear_probe")


def test_tie_goes_to_the_smaller_lr():
    frame = pd.DataFrame(
        [
            trial(CELL, 1e-2, 1, 0.8, 0.9),
            trial(CELL, 1e-4, 1, 0.8, 0.1),
            trial(CELL, 1e-3, 1, 0.8, 0.5),
        ]
    )
    assert select_best(frame).iloc[0]["lr"] == 1e-4


def test_tie_within_float_noise_is_a_tie():
    frame = pd.DataFrame(
        [
            trial(CELL, 1e-2, 1, 0.1 + 0.2, 0.9),
            trial(CELL, 1e-3, 1, 0.3, 0.5),
        ]
    )
    assert select_best(frame).iloc[0]["lr"] == 1e-3


def test_failed_stopped_and_running_trials_are_never_chosen():
    frame = pd.DataFrame(
        [
            trial(CELL, 1e-2, 1, 0.99, 0.99, status="failed"),
            trial(CELL, 3e-3, 1, 0.98, 0.98, status="stopped"),
            trial(CELL, 1e-4, 1, 0.97, 0.97, status="running"),
            trial(CELL, 1e-3, 1, 0.50, 0.40),
        ]
    )
    best = select_best(frame).iloc[0]
    assert best["lr"] == 1e-3
    assert best["n_candidates"] == 1 and best["n_configurations"] == 4


@pytest.mark.parametrize("lost", ["failed", "stopped", "running"])
def test_a_configuration_that_lost_a_seed_does_not_compete(lost):
    # 1e-3 is better on the two seeds it finished (0.9 > 0.6), but only 1e-2 finished on all three seeds:
    # averaging 1e-3 over its two survivors would compare it with 1e-2 over different seeds
    frame = pd.DataFrame(
        [
            trial(CELL, 1e-3, 1, 0.9, 0.8),
            trial(CELL, 1e-3, 2, 0.9, 0.6),
            trial(CELL, 1e-3, 3, 0.5, 0.5, status=lost),
            trial(CELL, 1e-2, 1, 0.6, 0.50),
            trial(CELL, 1e-2, 2, 0.6, 0.60),
            trial(CELL, 1e-2, 3, 0.6, 0.55),
        ]
    )
    best = select_best(frame).iloc[0]
    assert best["selection"] == "chosen" and best["lr"] == 1e-2
    assert best["n_seeds"] == best["expected_seeds"] == 3 and best["seeds"] == (1, 2, 3)
    assert best["test_acc_mean"] == pytest.approx(0.55) and best["test_acc_std"] == pytest.approx(0.05)
    assert not best["missing_seeds"]
    assert best["n_candidates"] == 1 and best["n_configurations"] == 2


def test_a_cell_where_no_configuration_finished_every_seed_gets_a_status_and_no_number():
    frame = pd.DataFrame(
        [
            trial(CELL, 1e-3, 1, 0.9, 0.8),
            trial(CELL, 1e-3, 2, 0.9, 0.6, status="failed"),
            trial(CELL, 1e-2, 1, 0.6, 0.5, status="stopped"),
            trial(CELL, 1e-2, 2, 0.6, 0.6),
        ]
    )
    best = select_best(frame).iloc[0]
    assert best["selection"] == "no configuration finished on every seed"
    assert math.isnan(best["lr"]) and math.isnan(best["test_acc_mean"]) and math.isnan(best["val_acc_mean"])
    assert best["n_seeds"] == 0 and best["expected_seeds"] == 2 and best["missing_seeds"]
    assert best["n_candidates"] == 0 and best["n_configurations"] == 2


def test_expected_seeds_per_cell_from_the_study_and_the_max_seen_otherwise():
    other = "linear_probe/uni/mlcc/full"
    frame = pd.DataFrame(
        [
            trial(CELL, 1e-3, 1, 0.9, 0.8),
            trial(CELL, 1e-3, 2, 0.9, 0.8),
            trial(other, 1e-3, 1, 0.9, 0.8),
        ]
    )
    seen = select_best(frame).set_index("cell_key")
    assert seen.loc[other, "missing_seeds"] and not seen.loc[CELL, "missing_seeds"]
    from_study = select_best(frame, expected_seeds={CELL: 3, other: 1}).set_index("cell_key")
    assert from_study.loc[CELL, "missing_seeds"] and not from_study.loc[other, "missing_seeds"]
    assert select_best(frame, expected_seeds=2).set_index("cell_key").loc[CELL, "expected_seeds"] == 2


def test_a_cell_without_a_finished_trial_is_listed_with_nothing_chosen():
    frame = pd.DataFrame([trial(CELL, 1e-3, 1, 0.9, 0.8, status="failed")])
    best = select_best(frame).iloc[0]
    assert best["n_seeds"] == 0 and best["missing_seeds"]
    assert best["selection"] == "no configuration finished on every seed"
    assert math.isnan(best["lr"]) and math.isnan(best["test_acc_mean"])


def test_several_searched_fields_lr_and_rank():
    cell = "lora/clip_vit_b16/sipakmed/shots=4/targets=qv"
    rows = []
    for lr, rank, val in [(1e-3, 2, 0.7), (1e-3, 8, 0.9), (1e-2, 2, 0.9), (1e-2, 8, 0.6)]:
        for seed in (1, 2):
            rows.append(trial(cell, lr, seed, val, val - 0.1 + seed / 100, **{"lora.rank": rank, "shots": 4}))
    table = select_best(pd.DataFrame(rows), searched=("lora.rank", "lr"))
    best = table.iloc[0]
    assert (best["lr"], best["lora.rank"]) == (1e-3, 8)
    assert best["test_acc_mean"] == pytest.approx(0.815)
    assert best["shots"] == 4
    assert list(table.columns).index("lr") < list(table.columns).index("lora.rank")


def test_ties_on_lr_fall_to_the_next_searched_field():
    cell = "lora/clip_vit_b16/mlcc/shots=1/targets=qv"
    rows = [trial(cell, 1e-3, 1, 0.8, 0.5, **{"lora.rank": r}) for r in (16, 4)]
    assert select_best(pd.DataFrame(rows), searched=("lr", "lora.rank")).iloc[0]["lora.rank"] == 4


def test_cells_are_chosen_independently_and_sorted():
    other = "linear_probe/clip_vit_b16/bcfc/full"
    frame = pd.DataFrame(
        [
            trial(CELL, 1e-3, 1, 0.9, 0.8),
            trial(CELL, 1e-2, 1, 0.5, 0.5),
            trial(other, 1e-3, 1, 0.5, 0.5),
            trial(other, 1e-2, 1, 0.9, 0.9),
        ]
    )
    best = select_best(frame)
    assert list(best["cell_key"]) == sorted([CELL, other])
    assert dict(zip(best["cell_key"], best["lr"], strict=True)) == {CELL: 1e-3, other: 1e-2}


def test_missing_columns_are_a_user_error_and_an_empty_frame_gives_an_empty_table():
    with pytest.raises(CytotuneError, match="missing columns test_acc"):
        select_best(
            pd.DataFrame([{"cell_key": CELL, "status": "finished", "seed": 1, "lr": 1.0, "best_val_acc": 1}])
        )
    assert select_best(pd.DataFrame()).empty


def test_where_parsing_and_filtering():
    assert parse_where("dataset=sipakmed,shots=4") == {"dataset": "sipakmed", "shots": "4"}
    assert parse_where("lora.targets=q,v,dataset=mlcc") == {"lora.targets": "q,v", "dataset": "mlcc"}
    with pytest.raises(CytotuneError, match="no '='"):
        parse_where("sipakmed")
    frame = pd.DataFrame(
        [trial(CELL, 1e-3, 1, 0.9, 0.8, shots=4.0), trial(CELL, 1e-2, 1, 0.9, 0.8, shots=8.0)]
    )
    assert list(filter_frame(frame, "shots=4,dataset=sipakmed")["lr"]) == [1e-3]
    assert list(filter_frame(frame, {"lr": "0.01"})["lr"]) == [1e-2]
    with pytest.raises(CytotuneError, match="no field 'rank'"):
        filter_frame(frame, "rank=2")


def reference_choice(rows: list[dict], searched: tuple[str, ...], expected: int) -> dict[str, tuple]:
    """The protocol spelled out in plain Python, cell by cell: the configurations finished (with both
    accuracies) on at least `expected` distinct seeds; the one with the highest mean validation accuracy,
    ties to the smaller searched values; its searched values, seeds, test mean and candidate count."""
    out = {}
    for cell in sorted({row["cell_key"] for row in rows}):
        configs: dict[tuple, list[dict]] = {}
        for row in rows:
            if (
                row["cell_key"] == cell
                and row["status"] == "finished"
                and not math.isnan(row["best_val_acc"])
            ):
                configs.setdefault(tuple(row[name] for name in searched), []).append(row)
        complete = {key: runs for key, runs in configs.items() if len({r["seed"] for r in runs}) >= expected}
        if not complete:
            out[cell] = ("none",)
            continue

        def mean(runs, field):
            return sum(r[field] for r in runs) / len(runs)

        key = min(complete, key=lambda k: (-round(mean(complete[k], "best_val_acc"), 12), k))
        runs = complete[key]
        out[cell] = (key, tuple(sorted({r["seed"] for r in runs})), mean(runs, "test_acc"), len(complete))
    return out


def random_trial(rng) -> dict:
    cell = rng.choice(["a/b/c/1", "a/b/c/2", "a/b/d/1"])
    status = rng.choice(["finished", "finished", "stopped", "failed"])
    val = rng.choice([0.5, 0.6, 0.7, math.nan])
    row = trial(cell, rng.choice([1e-2, 1e-3]), rng.randint(0, 2), val, rng.random(), status=status)
    return {**row, "lora.rank": rng.choice([2, 4])}


@pytest.mark.parametrize("searched", [("lr",), ("lr", "lora.rank")])
def test_matches_the_protocol_spelled_out_on_random_studies(searched):
    import random

    rng = random.Random(7)
    for _ in range(40):
        rows = [random_trial(rng) for _ in range(rng.randint(1, 40))]
        expected = rng.choice([1, 2, 3])
        best = select_best(pd.DataFrame(rows), searched, expected)
        reference = reference_choice(rows, searched, expected)
        assert list(best["cell_key"]) == list(reference)
        for row in best.to_dict("records"):
            want = reference[row["cell_key"]]
            if want == ("none",):
                assert row["selection"] != "chosen" and row["n_seeds"] == 0 and row["seeds"] == ()
                continue
            key, seeds, test_mean, candidates = want
            assert tuple(row[name] for name in searched) == key and row["seeds"] == seeds
            assert row["test_acc_mean"] == pytest.approx(test_mean, rel=1e-12)
            assert row["n_candidates"] == candidates and row["n_seeds"] == len(seeds)
            assert row["missing_seeds"] == (len(seeds) < expected)
