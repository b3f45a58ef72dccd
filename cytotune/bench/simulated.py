"""A simulated study trainable for `cytotune bench scale`: replays a synthetic learning curve, no model.

The curve of a trial is a deterministic function of its trial key (cell, searched values, seed): validation
accuracy rises towards a plateau that depends on how far the learning rate is from its cell's best, plus a
small per-seed offset, so seed-grouped ASHA has real decisions to make. A trial reports at its schedule's
evaluation steps (as `lora_finetune` does: base_steps + steps_per_shot x shots, every eval_every) with a
small checkpoint when the study's checkpoint clock says so, sleeps so its whole schedule lasts `seconds`,
and ends with the final report a real trial makes (every final metric, done_trial, result.json with
per-image test correctness). Every start of a trial (first or resumed), every step it reported and every end
is appended to a log file, so a benchmark can tell a trial run again after it finished, and count the steps
MLflow should hold.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cytotune.study.checkpoint_clock import CheckpointClock

STATE_FILE = "state.json"
TEST_IMAGES = 200


def _unit(text: str) -> float:
    """A number in [0, 1) fixed by `text`."""
    return int(hashlib.sha1(text.encode()).hexdigest()[:12], 16) / 16**12


def schedule(trial: dict[str, Any]) -> list[int]:
    """The steps at which a trial (a TrialConfig as JSON) evaluates: every eval_every, and its last step."""
    train = trial["train"]
    if train.get("max_steps"):
        steps = int(train["max_steps"])
    else:
        steps = int(train["base_steps"]) + int(train["steps_per_shot"]) * int(trial.get("shots") or 1)
    every = int(train["eval_every"])
    evals = list(range(every, steps + 1, every))
    return evals if evals and evals[-1] == steps else [*evals, steps]


def curve(trial_key: str, cell_key: str, lr: float, seed: int, step: int) -> tuple[float, float]:
    """(train_loss, val_acc) of the simulated trial at `step`: val_acc rises to a plateau set by the distance
    of log10(lr) from the cell's best learning rate, plus a per-seed offset."""
    best_lr = -4.0 + 2.0 * _unit(cell_key)  # the cell's best log10(lr), in [-4, -2)
    plateau = 0.9 - 0.15 * abs(math.log10(lr) - best_lr) + 0.02 * (_unit(f"{cell_key}/{seed}") - 0.5)
    rate = 150.0 + 300.0 * _unit(trial_key)
    val_acc = max(0.05, plateau * (1.0 - math.exp(-step / rate)))
    return 2.0 * math.exp(-step / rate) + 0.05, min(val_acc, 0.999)


def _dataset_fields(trial: dict[str, Any]) -> dict[str, Any]:
    name = str(trial["dataset"])
    return {
        "dataset_name": name,
        "dataset_digest": hashlib.sha1(name.encode()).hexdigest(),
        "dataset_root": str(trial["root"]),
        "dataset_train": 1000,
        "dataset_val": 100,
        "dataset_test": TEST_IMAGES,
    }


def _final(trial_key: str, best: float, best_step: int, steps: int, seconds: float) -> dict[str, Any]:
    test_acc = max(0.0, best - 0.02 * _unit(trial_key + "/test"))
    right = round(test_acc * TEST_IMAGES)
    return {
        "best_val_acc": best,
        "best_step": best_step,
        "test_acc": right / TEST_IMAGES,
        "test_balanced_acc": right / TEST_IMAGES,
        "test_macro_f1": right / TEST_IMAGES,
        "test_nll": 1.0 - best,
        "test_ece": 0.05,
        "trainable_params": 1000.0,
        "total_params": 1e8,
        "images_per_s": 100.0,
        "peak_mem_mb": 100.0,
        "wall_s": seconds,
        "steps": steps,
        "test_correct": "1" * right + "0" * (TEST_IMAGES - right),
    }


def _log(events: Path, *fields: Any) -> None:
    with events.open("a") as out:
        out.write("\t".join(str(f) for f in fields) + "\n")


def simulated_trainable(
    seconds: float, events: Path, checkpoint_every_s: float
) -> Callable[[dict[str, Any]], None]:
    """A Ray Tune function trainable over a study's Ray configs (TrialPlan.ray_config, the TrialConfig under
    "trial") whose full schedule lasts `seconds`, saving its state at most every `checkpoint_every_s`
    seconds, logging its starts, reported steps and ends to `events` (trial key, event, step, time)."""

    def trainable(config: dict[str, Any]) -> None:
        from ray import tune

        trial, key = config["trial"].model_dump(mode="json"), config["trial_key"]
        evals = schedule(trial)
        pause = seconds / len(evals)
        state = {"step": 0, "best": 0.0, "best_step": 0, "sim_s": 0.0}
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                state = json.loads((Path(folder) / STATE_FILE).read_text())
        _log(events, key, "start", state["step"], time.time())
        clock = CheckpointClock(checkpoint_every_s)
        fields = {**_dataset_fields(trial), "last_step": evals[-1]}
        for step in (s for s in evals if s > state["step"]):
            time.sleep(pause)
            loss, acc = curve(key, config["cell_key"], float(trial["lr"]), int(trial["seed"]), step)
            if acc > state["best"]:
                state.update(best=acc, best_step=step)
            state.update(step=step, sim_s=state["sim_s"] + pause)
            metrics = {
                **fields,
                "step": step,
                "train_loss": loss,
                "val_acc": acc,
                "best_val_acc": state["best"],
            }
            last = step == evals[-1]
            if not last and not clock.due():
                tune.report(metrics)
                _log(events, key, "step", step, time.time())
                continue
            with tempfile.TemporaryDirectory(prefix="cytotune-sim-") as folder:
                (Path(folder) / STATE_FILE).write_text(json.dumps(state))
                if last:
                    final = _final(key, state["best"], state["best_step"], step, state["sim_s"])
                    (Path(folder) / "result.json").write_text(json.dumps({**final, "trial_key": key}))
                    final.pop("test_correct")
                    metrics.update(final, val_acc=state["best"], done_trial=1)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
            _log(events, key, "step", step, time.time())
        _log(events, key, "end", state["step"], time.time())

    return trainable
