"""A study driven through MlflowCallback with Trial-like objects (no Ray workers): tracking test data.

Every trial of a small grid study (linear probe + LoRA, 2 lr x 2 seeds each) reports two evaluations; its
outcome is decided by `outcome(plan)`: "finished" (final result + checkpoint with the trial's artifacts),
"stopped" or "failed". Metrics are a fixed function of lr and seed, so the best configuration is known.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ray.tune import Checkpoint

from cytotune.study.grid import TrialPlan, expand_cells, expand_trials
from cytotune.study.launch import study_callback
from cytotune.study.spec import load_study

STUDY_YAML = """\
name: {name}
backbones: [tiny_clip]
datasets: [{{root: synthetic}}]
seeds: [1, 2]
methods:
  - method: linear_probe
    search: {{lr: [0.001, 0.01]}}
  - method: lora
    shots: [2]
    search: {{lr: [0.001, 0.01]}}
"""
CLASSES = ["alpha", "beta", "gamma"]


@dataclass
class FakeTrial:
    """The parts of ray.tune.experiment.Trial that the callback reads."""

    trial_id: str
    config: dict[str, Any]
    last_result: dict[str, Any] = field(default_factory=dict)
    checkpoint: Checkpoint | None = None
    error: str | None = None
    status: str = "RUNNING"  # Ray's Trial.status: TERMINATED (finished or stopped) or ERROR once ended

    def get_error(self) -> str | None:
        return self.error


def write_study(folder: Path, name: str) -> Path:
    """The fake study's YAML in `folder`."""
    path = folder / f"{name}.yaml"
    path.write_text(STUDY_YAML.format(name=name))
    return path


def launch_callback(study_yaml: Path, uri: str, **kwargs: Any):
    """The MLflow callback of a launch of the study, made as `cytotune run` makes it."""
    spec = load_study(study_yaml)
    return study_callback(spec, expand_cells(spec), uri, **kwargs)


def plans(study_yaml: Path) -> list[TrialPlan]:
    """The fake study's trials."""
    return expand_trials(load_study(study_yaml))


def val_acc(plan: TrialPlan) -> float:
    """Best validation accuracy of a trial: lr 1e-3 wins the linear probe, lr 1e-2 wins LoRA."""
    good = 1e-3 if plan.config.method == "linear_probe" else 1e-2
    return (0.8 if plan.config.lr == good else 0.6) + 0.01 * plan.config.seed


def test_acc(plan: TrialPlan) -> float:
    """Test accuracy of a trial (anti-correlated with validation, so selection by test would differ)."""
    return 0.9 - val_acc(plan) / 2


def default_outcome(plan: TrialPlan) -> str:
    """LoRA lr 1e-3 seed 2 is stopped, LoRA lr 1e-2 seed 2 fails; the rest finish."""
    if plan.config.method == "lora" and plan.config.seed == 2:
        return "stopped" if plan.config.lr == 1e-3 else "failed"
    return "finished"


def complete_lora_outcome(plan: TrialPlan) -> str:
    """As default_outcome, but LoRA lr 1e-2 finishes both seeds: a complete LoRA configuration."""
    if plan.config.method == "lora" and plan.config.lr == 1e-2:
        return "finished"
    return default_outcome(plan)


def start(callback, plan: TrialPlan, trial_id: str) -> FakeTrial:
    """A trial starts and reports two evaluations (steps 10 and 20)."""
    trial = FakeTrial(trial_id, plan.ray_config())
    callback.on_trial_start(0, [], trial)
    for step, share in ((10, 0.5), (20, 1.0)):
        result = {
            "step": step,
            "train_loss": 1.0 / step,
            "val_acc": val_acc(plan) * share,
            "best_val_acc": val_acc(plan) * share,
            "training_iteration": step // 10,
        }
        trial.last_result = result
        callback.on_trial_result(0, [], trial, result)
    return trial


def end(callback, plan: TrialPlan, trial: FakeTrial, outcome: str, workdir: Path) -> None:
    """The trial ends: finished with its final result and checkpoint, stopped by the scheduler, or failed."""
    if outcome == "failed":
        trial.error = f"RuntimeError: loss is NaN in trial {plan.trial_key}"
        callback.on_trial_error(0, [], trial)
        return
    if outcome == "finished":
        folder = workdir / trial.trial_id
        folder.mkdir(parents=True)
        (folder / "trial_manifest.csv").write_text("row,split\n0,train\n1,val\n2,test\n")
        metrics = final_metrics(plan)
        confusion = [[5, 1, 0], [0, 4, 2], [1, 0, 6]]
        result = {**metrics, "classes": CLASSES, "confusion_matrix": confusion, **test_images(plan)}
        (folder / "result.json").write_text(json.dumps(result))
        if plan.config.method == "lora":
            (folder / "adapter").mkdir()
            (folder / "adapter" / "adapter_config.json").write_text('{"rank": 2}')
            (folder / "adapter" / "adapter.safetensors").write_bytes(b"\0" * 16)
        trial.checkpoint = Checkpoint.from_directory(str(folder))
        result = {**metrics, "step": 30, "done_trial": 1}
        trial.last_result = result
        callback.on_trial_result(0, [], trial, result)
    callback.on_trial_complete(0, [], trial)


TEST_IMAGES = 200


def test_images(plan: TrialPlan) -> dict:
    """Per-image test results of a finished trial: test_acc(plan) of TEST_IMAGES right (which ones drawn
    by seed) and reliability bins with all of them at confidence 0.75 (an ECE of |test_acc - 0.75|)."""
    hits = round(test_acc(plan) * TEST_IMAGES)
    correct = np.zeros(TEST_IMAGES, bool)
    correct[np.random.default_rng(plan.config.seed).permutation(TEST_IMAGES)[:hits]] = True
    bins = {name: [0.0] * 15 for name in ("count", "confidence", "correct")}
    bins["count"][11], bins["confidence"][11], bins["correct"][11] = TEST_IMAGES, 0.75 * TEST_IMAGES, hits
    return {"test_correct": "".join("1" if c else "0" for c in correct), "test_reliability": bins}


def final_metrics(plan: TrialPlan) -> dict[str, float]:
    """The final metrics a finished trial reports."""
    lora = plan.config.method == "lora"
    return {
        "best_val_acc": val_acc(plan),
        "best_step": 20.0,
        "test_acc": test_acc(plan),
        "test_balanced_acc": test_acc(plan) - 0.01,
        "test_macro_f1": test_acc(plan) - 0.02,
        "test_nll": 1.0 - test_acc(plan),
        "test_ece": abs(test_acc(plan) - 0.75),
        "trainable_params": 1000.0 if lora else 200.0,
        "total_params": 50000.0,
        "images_per_s": 100.0,
        "peak_mem_mb": 300.0,
        "wall_s": 2.0,
        "steps": 30.0,
    }


def run_fake_study(
    callback, study_plans: list[TrialPlan], workdir: Path, outcome=default_outcome, stop_after=None
):
    """Drive the whole study through the callback; with `stop_after`, the driver dies after that many trials
    started (the last one mid-run, no experiment end), as an interrupted launch (Tune saved its experiment
    state, and so had the callback write what it buffered, just before)."""
    callback.setup()
    trials = []
    for index, plan in enumerate(study_plans):
        trials.append(start(callback, plan, f"trial_{index:05d}"))
        if stop_after is not None and index + 1 >= stop_after:
            callback.get_state()
            return
        end(callback, plan, trials[-1], outcome(plan), workdir)
        trials[-1].status = "ERROR" if outcome(plan) == "failed" else "TERMINATED"
    callback.on_experiment_end(trials)


def check_layout(
    client, study: str, study_yaml: Path, study_plans: list[TrialPlan], outcome=default_outcome
) -> None:
    """Assert the MLflow layout of a fake study driven to its end in one launch."""
    from cytotune.tracking import schema

    experiment = client.get_experiment_by_name(study)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get(schema.KIND) == schema.KIND_LAUNCH]
    children = [r for r in runs if r.data.tags.get(schema.KIND) == schema.KIND_TRIAL]
    assert len(parents) == 1 and len(children) == len(study_plans)
    parent = parents[0]
    text = study_yaml.read_text()
    any_failed = any(outcome(plan) == "failed" for plan in study_plans)
    assert parent.info.status == ("FAILED" if any_failed else "FINISHED")  # a trial failed for good
    assert parent.data.tags[schema.STUDY] == study
    assert parent.data.tags[schema.YAML_SHA256] == schema.sha256_text(text)
    assert parent.data.tags[schema.VERSION]
    assert parent.data.tags[schema.RAY_ADDRESS]
    assert Path(client.download_artifacts(parent.info.run_id, schema.STUDY_ARTIFACT)).read_text() == text
    cells = json.loads(Path(client.download_artifacts(parent.info.run_id, schema.CELLS_ARTIFACT)).read_text())
    assert cells == dict.fromkeys({p.cell_key for p in study_plans}, 2)  # seeds: [1, 2] in STUDY_YAML
    by_key = {r.data.tags[schema.TRIAL_KEY]: r for r in children}
    assert set(by_key) == {p.trial_key for p in study_plans}
    for plan in study_plans:
        run = by_key[plan.trial_key]
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        expected = outcome(plan)
        assert tags[schema.PARENT_RUN_ID] == parent.info.run_id
        assert tags[schema.CELL_KEY] == plan.cell_key
        assert tags[schema.RAY_TRIAL_ID].startswith("trial_")
        assert tags[schema.STATUS] == expected
        assert run.info.status == {"finished": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}[expected]
        assert params["backbone"] == "tiny_clip" and params["dataset"] == "synthetic"
        assert float(params["lr"]) == plan.config.lr and int(params["seed"]) == plan.config.seed
        assert params["method"] == plan.config.method
        if plan.config.method == "lora":
            assert params["shots"] == "2" and params["lora.rank"] == "2" and params["lora.targets"] == "q,v"
            assert params["lora.alpha"] == "1.0"
        else:
            assert "lora.rank" not in params and "shots" not in params
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert sorted(m.step for m in history) == [10, 20]
        assert {m.key for m in client.get_metric_history(run.info.run_id, "train_loss")} == {"train_loss"}
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        if expected == "finished":
            assert metrics["test_acc"] == test_acc(plan)
            for name in (
                "best_val_acc",
                "test_balanced_acc",
                "test_macro_f1",
                "trainable_params",
                "total_params",
            ):
                assert name in metrics
            for name in ("images_per_s", "peak_mem_mb", "wall_s"):
                assert name in metrics
            assert {"trial_manifest.csv", "result.json", "confusion_matrix.png"} <= artifacts
            if plan.config.method == "lora":
                adapter = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
                assert adapter == {"adapter/adapter_config.json", "adapter/adapter.safetensors"}
        else:
            assert "test_acc" not in metrics
        if expected == "failed":
            assert "loss is NaN" in tags["cytotune.error"]
            assert "error.txt" in artifacts
