"""Seed-grouped per-cell ASHA with scripted results: configurations are compared within their own cell, on
the mean over seeds, all seeds of a configuration share one fate, and a trial at its last step completes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from cytotune.study.rungs import CellRungs, rung_steps
from cytotune.study.scheduler import SeedGroupedASHA
from cytotune.study.spec import AshaSettings

ASHA = AshaSettings(grace_period=10, reduction_factor=2, max_steps=40)
STOP, CONTINUE = TrialScheduler.STOP, TrialScheduler.CONTINUE
# val_acc at steps 10, 20, 40 for 4 trials of an easy cell and 4 of a hard cell, best first in each cell
EASY = {f"easy{i}": [0.95 - 0.02 * i, 0.96 - 0.02 * i, 0.97 - 0.02 * i] for i in range(4)}
HARD = {f"hard{i}": [0.45 - 0.05 * i, 0.50 - 0.05 * i, 0.55 - 0.05 * i] for i in range(4)}


def trial(cell: str, lr: str, seed: int = 1) -> SimpleNamespace:
    key = f"{cell}/lr={lr}/seed={seed}"
    return SimpleNamespace(
        trial_id=key, config={"cell_key": cell, "trial_key": key, "trial": SimpleNamespace(seed=seed)}
    )


def play(scheduler) -> dict[str, int]:
    """Feed the scripted results rung by rung (easy cell first); return the step each trial stopped at."""
    trials = {name: trial(name.rstrip("0123456789"), name) for name in [*EASY, *HARD]}
    for t in trials.values():
        scheduler.on_trial_add(None, t)
    stopped: dict[str, int] = {}
    for rung, step in enumerate((10, 20, 40)):
        for name, curve in [*EASY.items(), *HARD.items()]:
            if name in stopped:
                continue
            decision = scheduler.on_trial_result(None, trials[name], {"step": step, "val_acc": curve[rung]})
            if decision == STOP:
                stopped[name] = step
    return stopped


def scheduler_of(asha=ASHA, seeds: int = 2) -> SeedGroupedASHA:
    return SeedGroupedASHA({"cell": asha}, {"cell": seeds})


def two_configurations(scheduler) -> tuple[SimpleNamespace, ...]:
    """Seeds 1 and 2 of configurations a and b of one cell, added to the scheduler: a1, a2, b1, b2."""
    trials = tuple(trial("cell", lr, seed) for lr in ("a", "b") for seed in (1, 2))
    for t in trials:
        scheduler.on_trial_add(None, t)
    return trials


def test_rungs_are_grace_times_powers_of_the_factor_up_to_max_steps():
    assert rung_steps(ASHA) == (10, 20, 40)
    assert rung_steps(AshaSettings(grace_period=10, reduction_factor=3, max_steps=100)) == (10, 30, 90)


def test_hard_cell_is_not_stopped_because_of_the_easy_cell():
    stopped = play(SeedGroupedASHA({"easy": ASHA, "hard": ASHA}, {"easy": 1, "hard": 1}))
    # ASHA's cutoff at rf=2 is the median of the means recorded so far: 0.95 -> easy1 (0.93) stops, etc.
    assert stopped == {"easy1": 10, "easy2": 10, "easy3": 10, "hard1": 10, "hard2": 10, "hard3": 10}


def test_one_pooled_asha_would_stop_every_hard_trial():
    pooled = AsyncHyperBandScheduler(
        time_attr="step",
        metric="val_acc",
        mode="max",
        max_t=40,
        grace_period=10,
        reduction_factor=2,
        stop_last_trials=False,
    )
    stopped = play(pooled)
    assert set(HARD) <= set(stopped)


def test_cells_without_asha_run_to_the_end():
    assert play(SeedGroupedASHA({"easy": None, "hard": None}, {"easy": 1, "hard": 1})) == {}


def test_seeds_share_one_fate_decided_on_their_mean():
    # rung 10: B = (0.8, 0.7), mean 0.75, arrives first; A = (0.9, 0.5), mean 0.7 < 0.75.
    # One ASHA per seed would keep A's seed 1 (0.9 > 0.8) and stop its seed 2 (0.5 < 0.7): a split fate.
    scheduler = scheduler_of()
    a1, a2, b1, b2 = (
        trial("cell", "A", 1),
        trial("cell", "A", 2),
        trial("cell", "B", 1),
        trial("cell", "B", 2),
    )
    for t in (a1, a2, b1, b2):
        scheduler.on_trial_add(None, t)
    assert scheduler.on_trial_result(None, b1, {"step": 10, "val_acc": 0.8}) == CONTINUE
    assert scheduler.on_trial_result(None, b2, {"step": 10, "val_acc": 0.7}) == CONTINUE
    # A's seed 1 is first at the rung: it keeps training until its sibling arrives
    assert scheduler.on_trial_result(None, a1, {"step": 10, "val_acc": 0.9}) == CONTINUE
    assert scheduler.on_trial_result(None, a1, {"step": 15, "val_acc": 0.9}) == CONTINUE
    assert scheduler.on_trial_result(None, a2, {"step": 10, "val_acc": 0.5}) == STOP
    assert scheduler.on_trial_result(None, a1, {"step": 20, "val_acc": 0.95}) == STOP
    assert scheduler.on_trial_result(None, b1, {"step": 20, "val_acc": 0.8}) == CONTINUE


def test_seed_mean_not_single_seeds_decides():
    # A's seed 2 alone (0.65) is below both of B's seeds, but A's mean (0.8) beats B's (0.75): A goes on
    scheduler = scheduler_of()
    results = [("B", 1, 0.8), ("B", 2, 0.7), ("A", 1, 0.95), ("A", 2, 0.65)]
    assert [
        scheduler.on_trial_result(None, trial("cell", lr, s), {"step": 10, "val_acc": v})
        for lr, s, v in results
    ] == [CONTINUE] * 4


def test_a_trial_whose_last_step_is_a_rung_completes():
    # the demo's 4-shot LoRA cells: 20 + 5 x 4 = 40 steps, and 40 is a rung of grace 10, factor 2
    scheduler = scheduler_of(seeds=1)
    good, bad = trial("cell", "good"), trial("cell", "bad")
    for step, good_acc, bad_acc in ((10, 0.5, 0.5), (20, 0.6, 0.6), (40, 0.9, 0.3)):
        assert (
            scheduler.on_trial_result(None, good, {"step": step, "val_acc": good_acc, "last_step": 40})
            == CONTINUE
        )
        assert (
            scheduler.on_trial_result(None, bad, {"step": step, "val_acc": bad_acc, "last_step": 40})
            == CONTINUE
        )
    # the same results in a cell whose trials run on past 40 stop the bad configuration at rung 40
    longer = scheduler_of(seeds=1)
    for step, good_acc, bad_acc in ((10, 0.5, 0.5), (20, 0.6, 0.6)):
        longer.on_trial_result(None, good, {"step": step, "val_acc": good_acc, "last_step": 80})
        longer.on_trial_result(None, bad, {"step": step, "val_acc": bad_acc, "last_step": 80})
    longer.on_trial_result(None, good, {"step": 40, "val_acc": 0.9, "last_step": 80})
    assert longer.on_trial_result(None, bad, {"step": 40, "val_acc": 0.3, "last_step": 80}) == STOP


def test_the_final_report_never_stops_a_trial():
    scheduler = scheduler_of(seeds=1)
    good, bad = trial("cell", "good"), trial("cell", "bad")
    scheduler.on_trial_result(None, good, {"step": 10, "val_acc": 0.9})
    final = {"step": 10, "val_acc": 0.1, "done_trial": 1}
    assert scheduler.on_trial_result(None, bad, final) == CONTINUE


def test_a_seed_failing_for_good_stops_its_siblings():
    scheduler = scheduler_of()
    a1, a2, b1 = trial("cell", "A", 1), trial("cell", "A", 2), trial("cell", "B", 1)
    assert scheduler.on_trial_result(None, a1, {"step": 5, "val_acc": 0.9}) == CONTINUE
    scheduler.on_trial_error(None, a2)
    assert scheduler.on_trial_result(None, a1, {"step": 6, "val_acc": 0.9}) == STOP
    assert scheduler.on_trial_result(None, b1, {"step": 6, "val_acc": 0.1}) == CONTINUE


def test_a_seed_starting_after_its_configuration_was_stopped_stops_at_its_first_report():
    rungs = CellRungs(ASHA, seeds=2)
    for seed in (1, 2):
        assert not rungs.result("B", seed, 10, 0.8)
    assert not rungs.result("A", 1, 10, 0.4)
    assert rungs.result("A", 2, 10, 0.4)
    assert rungs.result("A", 3, 1, 0.9)  # e.g. a retried or late seed
    assert rungs.recorded[10] == {"B": 0.8, "A": 0.4} and rungs.stopped == {"A"}


def test_a_configuration_that_passed_a_rung_early_is_stopped_when_better_ones_arrive():
    # grid order from the worst lr up: asynchronous ASHA alone lets each arrival pass (each beats the others)
    rungs = CellRungs(AshaSettings(grace_period=10, reduction_factor=3, max_steps=90), seeds=1)
    assert not rungs.result("worst", 1, 10, 0.3)
    assert not rungs.result("middle", 1, 10, 0.5)
    # the rung's cutoff over [0.3, 0.5] at rf=3 is the 2/3 quantile, 0.4333: "worst" stops at its next report
    assert rungs.result("worst", 1, 20, 0.9)
    assert not rungs.result("best", 1, 10, 0.7)
    # over [0.3, 0.5, 0.7] the cutoff is 0.5667: "middle" stops too, "best" goes on
    assert rungs.result("middle", 1, 20, 0.6)
    assert not rungs.result("best", 1, 20, 0.7)
    assert rungs.stopped == {"worst", "middle"}


def test_trial_to_run_is_the_first_pending_as_fifo_chooses_among_unended_trials():
    """The same choice as Ray's FIFOScheduler (scanning every trial) at each step, while ended trials are
    dropped from the scan."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import FIFOScheduler

    trials = [SimpleNamespace(trial_id=f"t{i}", status=Trial.PENDING, config={}) for i in range(6)]
    controller = SimpleNamespace(get_trials=lambda: trials)
    ours = SeedGroupedASHA({}, {})
    for trial in trials:
        ours.on_trial_add(controller, trial)
    steps = [
        {},
        {"t0": Trial.RUNNING},
        {"t1": Trial.TERMINATED, "t2": Trial.RUNNING},
        {"t0": Trial.ERROR, "t3": Trial.PAUSED, "t4": Trial.RUNNING},
        {"t5": Trial.RUNNING},
        {"t2": Trial.PENDING},  # a failed trial retried
        {"t2": Trial.TERMINATED, "t3": Trial.RUNNING, "t4": Trial.TERMINATED, "t5": Trial.TERMINATED},
    ]
    chosen = []
    for change in steps:
        for trial in trials:
            trial.status = change.get(trial.trial_id, trial.status)
        expected = FIFOScheduler().choose_trial_to_run(controller)
        assert ours.choose_trial_to_run(controller) is expected
        chosen.append(expected.trial_id if expected else None)
    assert chosen == ["t0", "t1", "t3", "t5", "t3", "t2", None]
    assert list(ours._unended) == ["t3"]  # only the trial still running is scanned


def test_a_seed_replayed_as_stopped_on_resume_stops_its_siblings_and_a_finished_one_decides_nothing():
    scheduler = scheduler_of()
    stopped, sibling, finished, other = two_configurations(scheduler)
    # their recorded ends, reported again on resume without a history: never stopped, nothing recorded
    assert scheduler.on_trial_result(None, stopped, {"val_acc": 0.5, "replayed": 1}) == CONTINUE
    assert (
        scheduler.on_trial_result(
            None, finished, {"step": 40, "val_acc": 0.1, "replayed": 1, "done_trial": 1}
        )
        == CONTINUE
    )
    assert scheduler.on_trial_result(None, sibling, {"step": 10, "val_acc": 0.99}) == STOP
    assert scheduler.on_trial_result(None, other, {"step": 10, "val_acc": 0.2}) == CONTINUE
    assert scheduler.on_trial_result(None, other, {"step": 20, "val_acc": 0.3}) == CONTINUE


def test_a_replayed_history_is_recorded_at_the_rungs_as_the_uninterrupted_study_recorded_it():
    """Configuration a's two seeds ended after Tune's last snapshot, before the driver died: their replays
    carry their val_acc histories, which decide b's rung as a's reports did before the kill."""
    scheduler = scheduler_of()
    a1, a2, b1, b2 = two_configurations(scheduler)
    finished = {"step": 40, "val_acc": 0.95, "replayed": 1, "done_trial": 1}
    history = [[10, 0.9], [20, 0.92], [40, 0.95]]
    assert scheduler.on_trial_result(None, a1, {**finished, "val_acc_history": history}) == CONTINUE
    history = [[10, 0.8], [20, 0.85], [40, 0.9]]
    assert scheduler.on_trial_result(None, a2, {**finished, "val_acc_history": history}) == CONTINUE
    # by hand: a's means are 0.85 at rung 10 and 0.885 at rung 20; rung 40 is both seeds' last step
    recorded = scheduler.rungs()["cell"].recorded
    means = [list(recorded[rung].values()) for rung in (10, 20, 40)]
    assert means == [[pytest.approx(0.85, abs=1e-15)], [pytest.approx(0.885, abs=1e-15)], []]
    # b's mean at rung 10, 0.75, is below the median of the kept [0.85]: both its seeds stop
    assert scheduler.on_trial_result(None, b1, {"step": 10, "val_acc": 0.7}) == CONTINUE  # waits for b2
    assert scheduler.on_trial_result(None, b2, {"step": 10, "val_acc": 0.8}) == STOP
    assert scheduler.on_trial_result(None, b1, {"step": 12, "val_acc": 0.7}) == STOP


def test_a_seed_replayed_as_stopped_records_its_history_and_stops_its_sibling():
    scheduler = scheduler_of()
    stopped, sibling, other1, other2 = two_configurations(scheduler)
    replay = {"val_acc": 0.6, "replayed": 1, "val_acc_history": [[10, 0.6]]}
    assert scheduler.on_trial_result(None, stopped, replay) == CONTINUE
    assert scheduler.on_trial_result(None, sibling, {"step": 10, "val_acc": 0.4}) == STOP
    # a's rung 10 mean, (0.6 + 0.4) / 2, is recorded: b at 0.45 is below it and stops
    assert list(scheduler.rungs()["cell"].recorded[10].values()) == [pytest.approx(0.5, abs=1e-15)]
    assert scheduler.on_trial_result(None, other1, {"step": 10, "val_acc": 0.4}) == CONTINUE
    assert scheduler.on_trial_result(None, other2, {"step": 10, "val_acc": 0.5}) == STOP


def test_rungs_kept_in_tune_s_snapshot_decide_a_resumed_study_as_the_uninterrupted_one(tmp_path):
    """The driver dies after two trials of the easy cell reached rung 10; Tune saved its callbacks' state
    (the keeper's rungs) in its last snapshot, through its own CallbackList, and hands it back on resume."""
    from ray.tune.callback import CallbackList

    from cytotune.study.scheduler import RungsKeeper

    settings = ({"easy": ASHA, "hard": ASHA}, {"easy": 1, "hard": 1})
    curves = {**EASY, **HARD}
    trials = {name: trial(name.rstrip("0123456789"), name) for name in curves}
    script = [(name, step, curves[name][rung]) for rung, step in enumerate((10, 20, 40)) for name in curves]

    def run(scheduler, steps, stopped):
        for name, step, value in steps:
            if name not in stopped:
                result = {"step": step, "val_acc": value}
                if scheduler.on_trial_result(None, trials[name], result) == STOP:
                    stopped[name] = step
        return stopped

    before = run(SeedGroupedASHA(*settings), script[:2], {})
    first = SeedGroupedASHA(*settings)
    run(first, script[:2], {})
    CallbackList([RungsKeeper(first)]).save_to_dir(str(tmp_path))
    resumed = SeedGroupedASHA(*settings)
    CallbackList([RungsKeeper(resumed)]).restore_from_dir(str(tmp_path))
    # by hand (as test_hard_cell_is_not_stopped_because_of_the_easy_cell): all but the best of each cell
    # stop at rung 10; easy2 (0.91) stops against the rung's kept [0.95, 0.93] (median 0.94)
    expected = {"easy1": 10, "easy2": 10, "easy3": 10, "hard1": 10, "hard2": 10, "hard3": 10}
    assert run(resumed, script[2:], dict(before)) == expected
    # with its rungs started afresh, easy2 is the first at rung 10 and goes on; it stops at rung 20 only,
    # after easy0 recorded 0.96 there: ten more steps of training than the uninterrupted study gave it
    assert run(SeedGroupedASHA(*settings), script[2:], dict(before)) == {**expected, "easy2": 20}
    # a cell whose ASHA settings changed since the snapshot starts afresh
    changed = SeedGroupedASHA({"easy": AshaSettings(grace_period=5, max_steps=40), "hard": ASHA}, settings[1])
    CallbackList([RungsKeeper(changed)]).restore_from_dir(str(tmp_path))
    assert changed.rungs() == {}


def test_a_study_without_results_saves_no_rungs():
    from cytotune.study.scheduler import RungsKeeper

    assert RungsKeeper(scheduler_of()).get_state() is None


def test_the_keeper_saves_plain_python_values_that_give_back_the_same_rungs():
    import pickle

    from cytotune.study.scheduler import RungsKeeper

    first = scheduler_of()
    seeds = {"a": (0.9, 0.8), "b": (0.5, 0.6)}  # b's mean 0.55 stops below a's 0.85 at rung 10
    for lr, values in seeds.items():
        for seed, value in enumerate(values, start=1):
            first.on_trial_result(None, trial("cell", lr, seed), {"step": 10, "val_acc": value})
    state = RungsKeeper(first).get_state()
    saved = pickle.dumps(state)
    assert b"cytotune" not in saved  # no cytotune class in it: any version of cytotune unpickles it
    resumed = scheduler_of()
    RungsKeeper(resumed).set_state(pickle.loads(saved))
    kept = resumed.rungs()["cell"]
    assert vars(kept) == vars(first.rungs()["cell"]) and kept.stopped == {"cell/lr=b"}
    # the first keeper's state held CellRungs objects: a study it saved resumes with them
    older = scheduler_of()
    RungsKeeper(older).set_state({"rungs": first.rungs()})
    assert vars(older.rungs()["cell"]) == vars(kept)
    # rungs a newer cytotune saved, or a cell's state that does not read, start afresh
    newer = scheduler_of()
    RungsKeeper(newer).set_state({**state, "version": 2})
    assert newer.rungs() == {}
    broken = scheduler_of()
    RungsKeeper(broken).set_state({"version": 1, "rungs": {"cell": {"seeds": 2}}})
    assert broken.rungs() == {}
