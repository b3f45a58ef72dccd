"""Per-cell Optuna search driven by hand (no Ray cluster): suggestions replicated over seeds, mean told."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import optuna
import pytest

from cytotune.study.grid import expand_cells, expand_trials
from cytotune.study.search import CellSearcher
from cytotune.study.spec import default_startup, load_study

SPACES = Path(__file__).resolve().parent.parent / "search_spaces"


def accuracy(config: dict) -> float:
    """A made-up best val accuracy: peaks at lr = 1e-2, lower for the hard backbone, a little seed noise."""
    lr, seed = config["trial"].lr, config["trial"].seed
    base = 0.9 if config["trial"].backbone == "tiny_clip" else 0.5
    return base - 0.05 * abs(math.log10(lr) + 2) + 0.01 * seed


def drain(searcher: CellSearcher, limit: int = 10_000) -> list[tuple[str, dict]]:
    out = []
    for i in range(limit):
        config = searcher.suggest(f"t{i}")
        if config == CellSearcher.FINISHED:
            return out
        out.append((f"t{i}", config))
    raise AssertionError("searcher never finished")


def complete(
    searcher: CellSearcher,
    suggested: list[tuple[str, dict]],
    stop: set[str] = frozenset(),
    fail: set[str] = frozenset(),
) -> None:
    for trial_id, config in suggested:
        acc = accuracy(config)
        if trial_id in stop:  # stopped early after one evaluation: no final report
            searcher.on_trial_result(trial_id, {"step": 10, "val_acc": acc - 0.2, "best_val_acc": acc - 0.2})
            searcher.on_trial_complete(
                trial_id, {"step": 10, "val_acc": acc - 0.2, "best_val_acc": acc - 0.2}
            )
        elif trial_id in fail:
            searcher.on_trial_result(trial_id, {"step": 10, "val_acc": acc - 0.2, "best_val_acc": acc - 0.2})
            searcher.on_trial_complete(trial_id, error=True)
        else:
            searcher.on_trial_result(trial_id, {"step": 10, "val_acc": acc - 0.1, "best_val_acc": acc - 0.1})
            searcher.on_trial_complete(trial_id, {"best_val_acc": acc, "val_acc": acc, "done_trial": 1})


def optuna_trials(journal: Path, cell_key: str) -> list[optuna.trial.FrozenTrial]:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    return optuna.load_study(study_name=cell_key, storage=storage).trials


def test_grid_study_suggests_every_trial_once_then_finishes():
    spec = load_study(SPACES / "demo.yaml")
    searcher = CellSearcher(expand_cells(spec))
    suggested = drain(searcher)
    assert [c["trial_key"] for _, c in suggested] == [t.trial_key for t in expand_trials(spec)]


def test_optuna_per_cell_replicates_seeds_and_tells_the_mean(optuna_demo_study, tmp_path):
    journal = tmp_path / "optuna.journal"
    cells = expand_cells(optuna_demo_study)
    searcher = CellSearcher(cells, journal)
    suggested = drain(searcher)
    probe = [c for _, c in suggested if c["trial"].method == "linear_probe"]
    assert len(suggested) == 16 + 2 * 3 * 2
    assert len({c["trial_key"] for _, c in suggested}) == len(suggested)
    per_suggestion = Counter((c["cell_key"], c["trial"].lr) for c in probe)
    assert len(per_suggestion) == 6 and set(per_suggestion.values()) == {2}
    assert all(1e-4 <= c["trial"].lr <= 1e-1 for c in probe)
    by_suggestion: dict[tuple, list[str]] = {}
    for tid, c in suggested:
        if c["trial"].method == "linear_probe":
            by_suggestion.setdefault((c["cell_key"], c["trial"].lr), []).append(tid)
    first, second = list(by_suggestion.values())[:2]
    stopped, failed = {first[1]}, {second[0]}  # one seed of one suggestion each
    complete(searcher, suggested, stop=stopped, fail=failed)
    State = optuna.trial.TrialState
    states = Counter()
    for cell in (c for c in cells if c.uses_optuna):
        for trial in optuna_trials(journal, cell.cell_key):
            mine = [
                (tid, c)
                for tid, c in suggested
                if c["cell_key"] == cell.cell_key and c["searched"] == trial.params
            ]
            assert len(mine) == 2
            ids = {tid for tid, _ in mine}
            expected = State.FAIL if ids & failed else State.PRUNED if ids & stopped else State.COMPLETE
            assert trial.state == expected
            states[trial.state] += 1
            if expected == State.COMPLETE:
                # what selection uses: the seed mean of the finished trials' best validation accuracy
                assert trial.value == pytest.approx(sum(accuracy(c) for _, c in mine) / 2)
            else:
                assert trial.value is None
    assert states == {State.COMPLETE: 4, State.PRUNED: 1, State.FAIL: 1}


def test_optuna_waits_for_every_seed(optuna_demo_study, tmp_path):
    searcher = CellSearcher(expand_cells(optuna_demo_study), tmp_path / "j.journal")
    suggested = drain(searcher)
    first = [(tid, c) for tid, c in suggested if c["trial"].method == "linear_probe"][:1]
    complete(searcher, first)
    key = first[0][1]["cell_key"]
    study = searcher._study(key)
    assert study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)) == []


@pytest.mark.parametrize("after_save", [0, 6])
def test_a_resumed_searcher_continues_the_optuna_studies(optuna_demo_study, tmp_path, after_save):
    """A searcher restored from its saved state continues each Optuna study. What it suggested after the
    save (`after_save`, some of it ended; then the driver died) comes again with the same keys, and each
    Optuna study ends with exactly its samples: none lost, none extra."""
    journal = tmp_path / "optuna.journal"
    cells = expand_cells(optuna_demo_study)
    first = CellSearcher(cells, journal)
    head = [(f"a{i}", first.suggest(f"a{i}")) for i in range(16 + 4)]
    complete(first, head)
    state = tmp_path / "searcher.pkl"
    first.save(str(state))
    lost = [(f"b{i}", first.suggest(f"b{i}")) for i in range(after_save)]
    complete(first, lost[:3])  # one suggestion ended on both seeds (told to Optuna), one on one seed
    second = CellSearcher(cells, journal)
    second.restore(str(state))
    rest = drain(second)
    complete(second, rest)
    assert [c["trial_key"] for _, c in rest[:after_save]] == [c["trial_key"] for _, c in lost]
    keys = [c["trial_key"] for _, c in head + rest]
    assert len(keys) == len(set(keys)) == 16 + 12
    lrs = {c["trial"].lr for _, c in head + rest if c["trial"].method == "linear_probe"}
    assert len(lrs) == 6
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    for cell in (c for c in cells if c.uses_optuna):
        study = optuna.load_study(study_name=cell.cell_key, storage=storage)
        assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3


def test_tpe_starts_modelling_after_a_third_of_the_samples_unless_the_yaml_says(optuna_demo_study, tmp_path):
    assert [default_startup(n) for n in (1, 3, 4, 6, 10, 30, 100)] == [1, 1, 2, 2, 4, 10, 10]
    searcher = CellSearcher(expand_cells(optuna_demo_study), tmp_path / "j.journal")
    drain(searcher)
    key = next(c.cell_key for c in expand_cells(optuna_demo_study) if c.uses_optuna)
    assert searcher._study(key).sampler._n_startup_trials == 1  # samples: 3
    text = (
        (tmp_path / "optuna.yaml")
        .read_text()
        .replace("    samples: 3", "    samples: 3\n    optuna: {startup: 3}")
    )
    (tmp_path / "startup.yaml").write_text(text)
    cells = expand_cells(load_study(tmp_path / "startup.yaml"))
    searcher = CellSearcher(cells, tmp_path / "k.journal")
    drain(searcher)
    assert searcher._study(key).sampler._n_startup_trials == 3
