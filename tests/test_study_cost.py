"""A study's cost: FLOPs of a forward against the hand count, trial work against hand-counted images, dataset
sizes against prepared manifests, and `cytotune cost` on the command line."""

from __future__ import annotations

import math

import pytest
from data_layouts import make_hicervix, make_mlcc
from typer.testing import CliRunner

from cytotune.cli import app
from cytotune.config import LoraSettings, TrainSettings, TrialConfig
from cytotune.data.manifest import prepare_dataset
from cytotune.errors import CytotuneError
from cytotune.study.cost import DataSize, dataset_size, forward_flops, parse_size, study_cost, trial_work


def vit_forward_flops(tokens: int, width: int, hidden: int, depth: int, patch: int, patches: int) -> int:
    """Matmul FLOPs of a ViT forward, by hand: patch embedding, then per block qkv, attention scores and
    weighted values, output projection and the two MLP layers (2 FLOPs a multiply-add)."""
    embed = 2 * patches * (3 * patch * patch) * width
    per_block = 2 * tokens * width * (3 * width + width + 2 * hidden) + 2 * 2 * tokens * tokens * width
    return embed + depth * per_block


def test_vit_b16_forward_flops_equal_the_hand_count_and_timm_s_published_figure():
    hand = vit_forward_flops(tokens=197, width=768, hidden=3072, depth=12, patch=16, patches=196)
    assert forward_flops("vit_b16") == hand
    assert forward_flops("vit_b16") / 2 == pytest.approx(17.6e9, rel=0.01)  # timm's card: 17.6 GMACs


def test_clip_l14_forward_adds_only_the_projection_to_the_vit_count():
    vit = vit_forward_flops(tokens=257, width=1024, hidden=4096, depth=24, patch=14, patches=256)
    projection = 2 * 1024 * 768  # the class token's embedding after the final layer norm
    assert forward_flops("clip_vit_l14") == vit + projection


def cfg(**fields) -> TrialConfig:
    settings = {"method": "lora", "backbone": "tiny_vit", "dataset": "mlcc", "root": "/data", "lr": 1e-3}
    return TrialConfig(**{**settings, **fields})


SIZE = DataSize(((70, 10, 20), (35, 5, 10), (7, 1, 2)))  # 3 classes: 112 train, 16 val, 32 test


def test_few_shot_lora_work_by_hand():
    train = TrainSettings(
        base_steps=50, steps_per_shot=100, batch_size=32, eval_every=50, validation="fewshot"
    )
    work = trial_work(cfg(shots=4, train=train), SIZE)
    # 12 train images (batch 12), 450 steps; 9 evaluations of min(4, val) per class = 4 + 4 + 1; test once
    assert work.train_images == 450 * 12
    assert work.eval_images == 9 * 9 + 32
    assert work.forwards() == 2 * 450 * 12 + 9 * 9 + 32


def test_fraction_lora_work_by_hand():
    train = TrainSettings(epochs=2, batch_size=8, eval_every=7, validation="full")
    work = trial_work(cfg(fraction=0.5, train=train), SIZE)
    n_train = 35 + 18 + 4  # floor(f * n + 0.5) per class
    steps = 2 * math.ceil(n_train / 8)
    assert (work.train_images, work.eval_images) == (steps * 8, math.ceil(steps / 7) * 16 + 32)


def test_feature_methods_cost_one_extraction_per_backbone_and_dataset():
    probe = [("probe", cfg(method="linear_probe", lr=lr, seed=s)) for lr in (1e-2, 1e-3) for s in (1, 2)]
    lora = [("lora", cfg(shots=1, seed=1, lora=LoraSettings(), train=TrainSettings(validation="full")))]
    lines = {
        (line.part, line.backbone): line
        for line in study_cost(probe + lora, {("mlcc", 3): SIZE}, {"tiny_vit": 10.0})
    }
    assert lines["probe", "tiny_vit"].trials == 4 and lines["probe", "tiny_vit"].flops == 0
    assert lines["features", "tiny_vit"].forwards == 160 and lines["features", "tiny_vit"].flops == 1600.0
    steps = 50 + 100
    assert lines["lora", "tiny_vit"].forwards == 2 * steps * 3 + math.ceil(steps / 50) * 16 + 32
    assert lines["lora", "tiny_vit"].gpu_hours(2.0) == pytest.approx(
        lines["lora", "tiny_vit"].flops / 2e12 / 3600
    )


def test_dataset_size_equals_the_prepared_manifest_s_counts(tmp_path):
    root = make_mlcc(tmp_path / "mlcc", per_class=7)
    manifest = prepare_dataset("mlcc", root, split=(0.6, 0.2, 0.2), cache_dir=tmp_path / "cache")
    size = dataset_size("mlcc", root, level=3, split=(0.6, 0.2, 0.2))
    counts = manifest.counts()
    assert size.per_class == tuple(
        tuple(int(v) for v in row[["train", "val", "test"]]) for _, row in counts.iterrows()
    )


def test_dataset_size_keeps_an_official_split(tmp_path):
    root = make_hicervix(tmp_path / "hicervix")
    manifest = prepare_dataset("hicervix", root, cache_dir=tmp_path / "cache")
    size = dataset_size("hicervix", root, level=3, split=(0.7, 0.1, 0.2))
    assert [size.split(s) for s in ("train", "val", "test")] == [
        int((manifest.frame["split"] == s).sum()) for s in ("train", "val", "test")
    ]


def test_a_size_given_by_hand_spreads_evenly_and_bad_text_is_one_line():
    # 6 and 5 images: 4.2/0.6/1.2 -> 4, 1, 1; 3.5/0.5/1.0 -> 4, 0, 1, then val takes one from train
    assert DataSize.even(11, 2, (0.7, 0.1, 0.2)).per_class == ((4, 1, 1), (3, 1, 1))
    assert parse_size("mlcc=963:4") == ("mlcc", (963, 4))
    with pytest.raises(CytotuneError, match="expected NAME=IMAGES:CLASSES"):
        parse_size("mlcc=963")


def test_cost_command_names_a_dataset_of_unknown_size_then_prices_it(tmp_path):
    space = tmp_path / "study.yaml"
    space.write_text(
        "name: c\nbackbones: [tiny_vit]\ndatasets: [{name: mlcc, root: absent}]\nseeds: [1, 2]\n"
        "methods:\n  - method: lora\n    shots: [1]\n    search: {lr: [1.0e-3, 1.0e-2]}\n"
    )
    runner = CliRunner()
    missing = runner.invoke(app, ["cost", str(space)])
    assert missing.exit_code != 0 and "--size mlcc=IMAGES:CLASSES" in str(missing.exception)
    priced = runner.invoke(app, ["cost", str(space), "--size", "mlcc=100:4", "--tflops", "1"])
    assert priced.exit_code == 0, priced.output
    total = priced.output.strip().splitlines()[-1].split()
    assert total[0] == "total" and total[1] == "4"
