"""The shipped studies carry the protocol of search_spaces/README.md: the training settings of every trial,
not only how many cells and trials there are. Expected numbers come from the paper and the authors' code."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cytotune.config import LoraSettings
from cytotune.study.grid import expand_cells, expand_trials
from cytotune.study.packs import ray_trial_count
from cytotune.study.spec import load_study
from cytotune.train.lora_finetune import lora_steps

ROOT = Path(__file__).resolve().parent.parent
SPACES = ROOT / "search_spaces"
LRS = {1e-2, 3e-3, 1e-3, 3e-4, 1e-4}
HICERVIX_TRAIN = 28_400  # ~ the official train split: 50 shots x 25 classes is 4.4% of it (paper)


def trials_of(name: str):
    return expand_trials(load_study(SPACES / f"{name}.yaml"))


def common_settings(trials) -> None:
    """AdamW weight decay 1e-2, batch 32 (paper), eval batch 256, cosine to 1e-6, 50 warmup steps (code)."""
    for t in trials:
        s = t.config.train
        assert (s.weight_decay, s.batch_size, s.min_lr, s.warmup_steps) == (1e-2, 32, 1e-6, 50)
        assert s.augment and s.max_steps is None and s.device == "auto"
        assert s.short_class == "error"  # a class short of the shots stops the study, naming it
    assert {t.config.lr for t in trials} == LRS
    assert {t.config.seed for t in trials} == {1, 2, 3}


def test_experiment_1_probe_trains_100_epochs_on_the_whole_train_split():
    trials = trials_of("exp1_linear_probe")
    common_settings(trials)
    for t in trials:
        assert t.config.method == "linear_probe"
        assert t.config.shots is None and t.config.fraction is None
        assert t.config.train.probe_epochs == 100
        assert t.config.train.validation == "full"
    backbones = {"clip_vit_b16", "quilt_b16", "biomedclip", "uni", "vit_b16"}
    assert {t.config.backbone for t in trials} == backbones
    assert {(t.config.dataset, t.config.level) for t in trials} == {
        ("bcfc", 3),
        ("mlcc", 3),
        ("sipakmed", 3),
        ("hicervix", 3),
    }


@pytest.mark.parametrize("name", ["exp2_lora_fewshot", "exp2_rank_sweep"])
def test_experiment_2_lora_steps_warmup_eval_and_fewshot_validation(name):
    trials = trials_of(name)
    common_settings(trials)
    for t in trials:
        cfg = t.config
        assert cfg.method == "lora" and cfg.fraction is None
        # 50 + 100 x shots steps (authors' code), whatever the train set size
        assert lora_steps(cfg, num_train=10_000) == 50 + 100 * cfg.shots
        assert cfg.train.eval_every == 50
        # min(shots, 4) validation images per class (authors' code) unless `validation: full`
        assert cfg.train.validation == "fewshot"
        assert (cfg.lora.targets, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.scaling) == (
            ("q", "v"),
            1.0,
            0.25,
            "rslora",
        )
        assert cfg.lora.blocks is None  # every attention block
    ranks = {t.config.lora.rank for t in trials}
    assert ranks == ({2} if name == "exp2_lora_fewshot" else {1, 2, 4, 8, 16, 32})
    assert {t.config.shots for t in trials} == {1, 2, 4, 8, 16, 50}
    asha = load_study(SPACES / f"{name}.yaml").methods[0].asha
    assert (asha.grace_period, asha.reduction_factor, asha.max_steps) == (100, 2, 50 + 100 * 50)


def test_experiment_3_is_100_passes_over_the_fraction_with_lora_qkvo_rank_16():
    trials = trials_of("exp3_lora_data_fraction")
    common_settings(trials)
    longest = 0
    for t in trials:
        cfg = t.config
        assert cfg.method == "lora" and cfg.shots is None
        assert cfg.train.epochs == 100 and cfg.train.eval_every == 500
        assert cfg.train.validation == "full"
        n = round(cfg.fraction * HICERVIX_TRAIN)
        assert lora_steps(cfg, num_train=n) == 100 * math.ceil(n / 32)
        longest = max(longest, lora_steps(cfg, num_train=n))
        assert cfg.lora == LoraSettings(
            rank=16, alpha=1.0, dropout=0.25, targets=("q", "k", "v", "o"), scaling="rslora"
        )
    assert longest == 100 * math.ceil(HICERVIX_TRAIN / 32) == 88_800
    asha = load_study(SPACES / "exp3_lora_data_fraction.yaml").methods[0].asha
    assert (asha.grace_period, asha.reduction_factor) == (1500, 3)
    assert asha.max_steps >= longest  # no trial is cut by the scheduler's horizon


def test_demo_settings():
    trials = trials_of("demo")
    probes = [t.config for t in trials if t.config.method == "linear_probe"]
    loras = [t.config for t in trials if t.config.method == "lora"]
    assert {(c.train.probe_epochs, c.train.batch_size, c.train.warmup_steps) for c in probes} == {(30, 16, 5)}
    for cfg in loras:
        s = cfg.train
        assert (s.device, s.batch_size, s.warmup_steps, s.eval_every) == ("cpu", 16, 5, 10)
        assert s.validation == "full"
        assert lora_steps(cfg, num_train=100) == 20 + 5 * cfg.shots
        assert (cfg.lora.rank, cfg.lora.targets) == (2, ("q", "v"))
    asha = next(b.asha for b in load_study(SPACES / "demo.yaml").methods if b.method == "lora")
    assert (asha.grace_period, asha.reduction_factor, asha.max_steps) == (10, 2, 40)


PACKED = [("exp2_lora_fewshot_packed", "exp2_lora_fewshot"), ("demo_packed", "demo")]


@pytest.mark.parametrize(("packed", "alone"), PACKED)
def test_a_packed_space_has_the_trials_of_its_unpacked_one(packed, alone):
    """Packing changes how trials run, never which: the same trial keys and configurations."""
    packed_trials = {t.trial_key: t.config for t in trials_of(packed)}
    assert packed_trials == {t.trial_key: t.config for t in trials_of(alone)}
    blocks = load_study(SPACES / f"{packed}.yaml").methods
    if packed == "demo_packed":
        assert all(block.pack for block in blocks)
    else:  # the B-size backbones packed, UNI (ViT-L) alone: 96 packs and 360 separate trials
        assert [(block.backbones, block.pack) for block in blocks] == [
            (("clip_vit_b16", "quilt_b16", "biomedclip", "vit_b16"), True),
            (("uni",), False),
        ]
        cells = expand_cells(load_study(SPACES / f"{packed}.yaml"))
        assert ray_trial_count(cells) == 4 * 4 * 6 + 4 * 6 * 5 * 3 == 456


def test_the_protocol_is_cited_from_the_repository():
    """Code, YAMLs and README cite search_spaces/README.md, never a PROTOCOL.md users do not have."""
    readme = (SPACES / "README.md").read_text()
    for heading in ("Experiment 1", "Experiment 2", "Experiment 3", "Deviations"):
        assert heading in readme
    folders = ("cytotune", "search_spaces", "infra", "notebooks")
    files = [f for d in folders for f in ROOT.joinpath(d).rglob("*") if f.is_file() and f.suffix != ".pyc"]
    files += [ROOT / "README.md", ROOT / "Makefile"]
    citing = [str(f.relative_to(ROOT)) for f in files if "PROTOCOL.md" in f.read_text(errors="replace")]
    assert citing == []
