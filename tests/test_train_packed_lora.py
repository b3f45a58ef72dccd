"""Packed LoRA: every configuration of a pack trains as its separate trial does; resume, early stopping."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from cytotune.config import TrainSettings, TrialConfig
from cytotune.data.synthetic import generate_synthetic
from cytotune.errors import CytotuneError
from cytotune.models.lora import load_adapter
from cytotune.train.lora_finetune import run_lora
from cytotune.train.packed_lora import run_lora_pack, rung_survivors

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TIMING = {"images_per_s", "peak_mem_mb", "wall_s", "artifacts"}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Synthetic cytology, 3 classes x 40 images of 32 px."""
    return generate_synthetic(tmp_path_factory.mktemp("synthetic"), classes=3, per_class=40, size=32, seed=0)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def lora_config(root: Path, cache_dir: Path, backbone: str, lr: float, seed: int, **train) -> TrialConfig:
    settings = {"image_cache_size": 32, "warmup_steps": 3, "max_steps": 12, "eval_every": 4, "device": "cpu"}
    return TrialConfig(
        method="lora",
        backbone=backbone,
        dataset="synthetic",
        root=root,
        cache_dir=cache_dir,
        shots=3,
        lr=lr,
        seed=seed,
        train=TrainSettings(**{**settings, **train}),
    )


# Test probabilities come from float32 logits that the grouped and the separate forward round differently
# (~1e-7 relative); a saturated softmax (a large lr) turns that into up to ~1e-4 relative in NLL and ECE.
# Predictions, accuracies and every other field are equal exactly.
PROBABILISTIC = ("test_nll", "test_ece", "test_reliability")


def untimed(result) -> dict:
    data = result.to_dict()
    for key in (*TIMING, *PROBABILISTIC):
        data.pop(key)
    return data


def same(result, other) -> bool:
    """Equal results: exactly, but for the test probabilities' rounding."""
    a, b = result.to_dict(), other.to_dict()
    close = all(a[key] == pytest.approx(b[key], rel=1e-3) for key in ("test_nll", "test_ece")) and all(
        a["test_reliability"][bin_] == pytest.approx(values, rel=1e-3, abs=1e-6)
        for bin_, values in b["test_reliability"].items()
    )
    return close and untimed(result) == untimed(other)


def serialised(state: dict) -> dict:
    """A checkpoint as it comes back from storage."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def assert_close_states(packed: dict, alone: dict) -> None:
    assert packed.keys() == alone.keys()
    for name, tensor in alone.items():
        torch.testing.assert_close(packed[name], tensor, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("backbone", ["tiny_vit", "tiny_clip"])
def test_each_configuration_of_a_pack_trains_as_its_separate_trial(root, cache_dir, backbone, tmp_path):
    cfgs = [lora_config(root, cache_dir, backbone, lr, seed) for lr in (3e-2, 3e-3) for seed in (1, 2)]
    assert cfgs[0].lora.dropout > 0  # each configuration's own LoRA dropout masks are part of what is equal
    reports = []
    outcomes = run_lora_pack(
        cfgs,
        report=lambda metrics, state: reports.append((metrics, serialised(state))),
        out_dirs=[tmp_path / str(i) for i in range(len(cfgs))],
    )
    assert [sorted(metrics) for metrics, _ in reports] == [[0, 1, 2, 3]] * 3
    for index, (cfg, outcome) in enumerate(zip(cfgs, outcomes, strict=True)):
        alone_reports = []
        alone = run_lora(cfg, report=lambda m, s, out=alone_reports: out.append((m, s)))
        packed_metrics = [metrics[index] for metrics, _ in reports]
        for packed, single in zip(packed_metrics, [m for m, _ in alone_reports], strict=True):
            assert packed["step"] == single["step"] and packed["val_acc"] == single["val_acc"]
            assert packed["train_loss"] == pytest.approx(single["train_loss"], rel=1e-5)
        assert outcome.status == "finished" and same(outcome.result, alone)
        packed_best = reports[-1][1]["configs"][index]["best"]["state"]
        assert_close_states(packed_best, alone_reports[-1][1]["best"]["state"])
        _, head, meta = load_adapter(outcome.result.artifacts["adapter"])
        assert meta["backbone"] == backbone and meta["classes"] == outcome.result.classes
        torch.testing.assert_close(head.weight, packed_best["head.weight"])
        assert (tmp_path / str(index) / "trial_manifest.csv").is_file()


@pytest.fixture(scope="module")
def stopped_pack(root, cache_dir):
    """A pack of 3 learning rates x 2 seeds with a rung at step 8 (eta 3), its reports and checkpoints."""
    cfgs = [
        lora_config(root, cache_dir, "tiny_vit", lr, seed) for lr in (3e-1, 1e-2, 1e-3) for seed in (1, 2)
    ]
    reports = []
    outcomes = run_lora_pack(
        cfgs, report=lambda m, s: reports.append((m, serialised(s))), rungs=(8,), eta=3.0
    )
    return cfgs, outcomes, reports


def test_rung_survivors_keep_the_top_share_of_seed_means():
    means = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4, "e": 0.5}
    assert rung_survivors(means, 2.0) == {"c", "d", "e"}  # median 0.3
    assert rung_survivors(means, 3.0) == {"d", "e"}  # 2/3 quantile: 0.3 + 2/3 * 0.1
    assert rung_survivors({"a": 0.5, "b": 0.5}, 4.0) == {"a", "b"}  # ties go on together


def test_a_rung_stops_whole_configurations_by_their_seed_mean(stopped_pack):
    cfgs, outcomes, reports = stopped_pack
    at_rung = reports[1][0]
    means = {
        lr: (at_rung[2 * i]["val_acc"] + at_rung[2 * i + 1]["val_acc"]) / 2 for i, lr in enumerate((1, 2, 3))
    }
    survivors = rung_survivors(means, 3.0)
    assert len(survivors) < 3  # this pack does stop something at its rung
    for i, lr in enumerate((1, 2, 3)):
        statuses = {outcomes[2 * i].status, outcomes[2 * i + 1].status}
        assert statuses == ({"finished"} if lr in survivors else {"stopped"})
    for cfg, outcome in zip(cfgs, outcomes, strict=True):
        if outcome.status == "stopped":
            assert outcome.steps == 8 and outcome.result is None
        else:
            assert same(outcome.result, run_lora(cfg))
    later = sorted({index for metrics, _ in reports[2:] for index in metrics})
    assert later == [i for i, o in enumerate(outcomes) if o.status == "finished"]


def test_a_pack_resumed_from_a_checkpoint_equals_the_uninterrupted_pack(stopped_pack):
    cfgs, outcomes, reports = stopped_pack
    for taken in (0, 1):
        resumed_reports = []
        resumed = run_lora_pack(
            cfgs,
            report=lambda m, s, out=resumed_reports: out.append(m),
            resume=reports[taken][1],
            rungs=(8,),
            eta=3.0,
        )
        assert resumed_reports == [m for m, _ in reports[taken + 1 :]]
        for before, after in zip(outcomes, resumed, strict=True):
            assert (after.status, after.steps, after.best_val_acc) == (
                before.status,
                before.steps,
                before.best_val_acc,
            )
            if before.result is not None:
                assert same(after.result, before.result)


def test_a_diverging_configuration_fails_alone(root, cache_dir):
    cfgs = [
        lora_config(root, cache_dir, "tiny_clip", lr, 1, warmup_steps=0, max_steps=4) for lr in (1e20, 1e-2)
    ]
    failed, finished = run_lora_pack(cfgs)
    assert failed.status == "failed" and failed.result is None and failed.steps == 2
    assert "LoRA tiny_clip/synthetic lr=1e+20 seed=1: training loss is nan at step 2" in failed.error
    assert finished.status == "finished" and same(finished.result, run_lora(cfgs[1]))
    (alone,) = run_lora_pack(cfgs[:1])
    assert alone.status == "failed" and alone.error == failed.error


def test_a_pack_takes_one_cell_and_rungs_at_evaluations(root, cache_dir):
    cfg = lora_config(root, cache_dir, "tiny_vit", 1e-2, 1)
    with pytest.raises(CytotuneError, match="one cell"):
        run_lora_pack([cfg, cfg.model_copy(update={"shots": 2})])
    with pytest.raises(CytotuneError, match=r"rungs \[3\] are not evaluation steps"):
        run_lora_pack([cfg], rungs=(3,))


def test_bench_pack_trains_both_sides_to_the_same_results(tmp_path):
    from cytotune.bench.pack import bench_pack

    (row,) = bench_pack(
        tmp_path, backbone="tiny_vit", batch_sizes=(8,), steps=2, lrs=(1e-2, 1e-3), seeds=(1,)
    )
    assert (row.batch_size, row.configurations, row.per_pass, row.images) == (8, 2, 2, 2 * 2 * 8)
    assert row.same_results == 2 and row.packed_train_s > 0 and row.separate_cpu_s > 0
    assert row.line().startswith("    8        2 |") and row.line().endswith("| 2/2")


def test_cli_bench_pack_refuses_batch_sizes_it_cannot_read():
    from typer.testing import CliRunner

    from cytotune.cli import app

    result = CliRunner().invoke(app, ["bench", "pack", "--batch-sizes", "4,x"])
    assert result.exit_code != 0 and "--batch-sizes '4,x': expected whole numbers" in str(result.exception)
    result = CliRunner().invoke(app, ["bench", "pack", "--batch-sizes", "6", "--backbone", "tiny_vit"])
    assert result.exit_code != 0 and "batch sizes [6] are not whole shots of 4 classes" in str(
        result.exception
    )
