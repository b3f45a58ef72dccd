"""How many trials Ray Tune may keep pending: as many as the cluster's nodes run at once."""

from __future__ import annotations

import os
from pathlib import Path

from cytotune.study.grid import expand_cells
from cytotune.study.resources import PENDING_ENV, pending_trials_limit, trial_slots
from cytotune.study.spec import load_study

SPACES = Path(__file__).resolve().parent.parent / "search_spaces"


def test_slots_count_the_trials_each_node_holds_and_the_env_wins(monkeypatch):
    cells = expand_cells(load_study(SPACES / "exp2_lora_fewshot.yaml"))  # 4 CPU and 1 GPU a trial
    # 16 CPU / 4 GPU holds 4; 8 CPU / 8 GPU holds 2 (CPU-bound); a node without GPU none
    nodes = [{"CPU": 16.0, "GPU": 4.0}, {"CPU": 8.0, "GPU": 8.0}, {"CPU": 64.0}]
    assert trial_slots(cells, nodes) == 6
    assert trial_slots(cells, [{"CPU": 64.0}]) == 1
    monkeypatch.delenv(PENDING_ENV, raising=False)
    with pending_trials_limit(cells, nodes) as limit:
        assert limit == 6 and os.environ[PENDING_ENV] == "6"
    assert PENDING_ENV not in os.environ
    monkeypatch.setenv(PENDING_ENV, "3")
    with pending_trials_limit(cells, nodes) as limit:
        assert limit == 3
    assert os.environ[PENDING_ENV] == "3"
