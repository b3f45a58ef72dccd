"""The Ray Tune trainable a study runs: its trial function (the study's, or a benchmark's simulated one) with
each trial's resources, and the replays of a resume.

A replayed trial (tracking/replay.py: it ended before the driver died, after Tune's last snapshot) makes its
one report and returns without calling the trial function. Imports nothing heavy: Ray's workers load it with
the trainable.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from ray import tune


def trial_resources(config: dict[str, Any]) -> tune.PlacementGroupFactory:
    """The resources a trial asks for, from its Ray config (set per method block in the study YAML)."""
    ask = config.get("resources", {"CPU": 1.0, "GPU": 0.0})
    return tune.PlacementGroupFactory([{name: amount for name, amount in ask.items() if amount > 0}])


def tune_trainable(train: Callable[[dict[str, Any]], None], replays: Mapping[str, dict[str, Any]]) -> Any:
    """`train` (a function of a trial's Ray config) with per-trial resources; a trial whose key has a replay
    reports it instead of training. Named as `train` is: Tuner.restore requires the name it was launched
    with."""

    def trial(config: dict[str, Any], replays: Mapping[str, str]) -> None:
        replay = replays.get(config.get("trial_key", ""))
        if replay is None:
            return train(config)
        tune.report(json.loads(replay))
        return None

    trial.__name__ = getattr(train, "__name__", "trial")
    # as JSON text: every trial loads the whole map, and 10,800 replays load in 15 ms as text, 85 ms as dicts
    encoded = {key: json.dumps(replay) for key, replay in replays.items()}
    return tune.with_resources(tune.with_parameters(trial, replays=encoded), trial_resources)
