"""`bench asha`'s offline replay on scripted curves: steps trained and choices, counted by hand."""

from __future__ import annotations

import pytest

from cytotune.bench.asha import TrialCurve, choices, compare, load_curves, replay, save_curves
from cytotune.errors import CytotuneError
from cytotune.study.spec import AshaSettings

CELL = "lora/tiny_clip/synthetic/shots=1/rank=2,targets=qv"
ASHA = {CELL: AshaSettings(grace_period=10, reduction_factor=2, max_steps=40)}  # rungs 10, 20 (40 is last)
SEEDS = {CELL: 2}


def curve(lr: float, seed: int, val: tuple[float, ...], test: float) -> TrialCurve:
    return TrialCurve(
        cell_key=CELL,
        configuration=f"{CELL}/lr={lr!r}",
        lr=lr,
        seed=seed,
        last_step=40,
        steps=(10, 20, 30, 40),
        val_acc=val,
        best_val_acc=max(val),
        test_acc=test,
    )


def two_configurations() -> list[TrialCurve]:
    """lr 1e-2 ahead of lr 1e-3 at every report, two seeds each."""
    return [
        curve(1e-2, 1, (0.6, 0.7, 0.8, 0.9), 0.80),
        curve(1e-2, 2, (0.6, 0.7, 0.8, 0.9), 0.82),
        curve(1e-3, 1, (0.4, 0.5, 0.6, 0.7), 0.60),
        curve(1e-3, 2, (0.5, 0.5, 0.6, 0.7), 0.62),
    ]


def test_grid_order_stops_the_worse_configuration_with_both_seeds():
    curves = two_configurations()
    run = replay(curves, ASHA, SEEDS, order=0, workers=4)
    # all four start together: at step 10, lr 1e-2 is first at the rung and goes on; lr 1e-3's seed 1 waits
    # for seed 2 (mean 0.45 < 0.6), which stops at once; seed 1 stops at its next report (step 20)
    assert run.steps == (40, 40, 20, 10) and run.stopped == {2, 3}
    result = compare(curves, run, SEEDS)
    assert (result.full_steps, result.es_steps) == (160, 110)
    assert result.ratio == pytest.approx(110 / 160)
    assert (result.cells, result.same, result.within_std, result.agreement) == (1, 1, 0, 1.0)


def test_one_trial_at_a_time_a_stopped_configuration_stops_its_later_seed_at_its_first_report():
    curves = two_configurations()
    run = replay(curves, ASHA, SEEDS, order=0, workers=1)
    # sequential: seed 1 of lr 1e-3 runs alone to its end (nothing decided before seed 2 arrives)
    assert run.steps == (40, 40, 40, 10) and run.stopped == {3}


def late_bloomer(test_best: float) -> list[TrialCurve]:
    """lr 1e-2 is best at the end (val 0.9) but behind at the first rung: early stopping loses it."""
    return [
        curve(1e-3, 1, (0.6, 0.7, 0.7, 0.7), 0.70),
        curve(1e-3, 2, (0.6, 0.7, 0.7, 0.7), 0.70),
        curve(1e-2, 1, (0.4, 0.7, 0.8, 0.9), test_best - 0.05),
        curve(1e-2, 2, (0.4, 0.7, 0.8, 0.9), test_best + 0.05),
    ]


def test_a_different_choice_within_the_full_grids_seed_std_agrees_and_one_outside_does_not():
    # full grid picks 1e-2: test mean test_best, sample std of +-0.05 around it = 0.0707
    near = late_bloomer(0.75)
    run = replay(near, ASHA, SEEDS, order=0, workers=4)
    assert run.stopped == {2, 3}
    result = compare(near, run, SEEDS)
    assert (result.same, result.within_std, result.agreement) == (0, 1, 1.0)  # |0.70 - 0.75| <= 0.0707
    far = late_bloomer(0.85)
    result = compare(far, replay(far, ASHA, SEEDS, order=0, workers=4), SEEDS)
    assert (result.same, result.within_std, result.agreement) == (0, 0, 0.0)  # |0.70 - 0.85| > 0.0707


def test_other_orders_shuffle_configurations_and_speeds_but_count_every_trial():
    curves = late_bloomer(0.8)
    runs = [replay(curves, ASHA, SEEDS, order=k, workers=2) for k in range(1, 6)]
    for run in runs:
        assert all(s in (10, 20, 30, 40) for s in run.steps)
        assert all(run.steps[i] == 40 for i in range(4) if i not in run.stopped)
        # a configuration with a stopped seed is never chosen (a seed may have finished before its sibling
        # started, two trials at a time: it stays finished, but its configuration is incomplete)
        chosen = choices(curves, run.stopped, SEEDS).iloc[0]
        assert chosen["lr"] == (1e-3 if {2, 3} & run.stopped else 1e-2)
        assert not ({0, 1} & run.stopped and {2, 3} & run.stopped)
    assert any(run.stopped for run in runs)


def test_curves_round_trip_and_a_bad_file_is_one_clear_error(tmp_path):
    curves = late_bloomer(0.8)
    assert load_curves(save_curves(curves, tmp_path / "curves.json")) == curves
    (tmp_path / "bad.json").write_text('{"not": "a list"}')
    with pytest.raises(CytotuneError, match="bad.json: not a curves file"):
        load_curves(tmp_path / "bad.json")
