"""Grid expansion: cells and trials of the paper's studies, stable keys (pure, no Ray)."""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import pytest

from cytotune.config import TrialConfig
from cytotune.errors import CytotuneError
from cytotune.study.grid import count_trials, expand_cells, expand_trials
from cytotune.study.resources import fit_cells, local_nodes
from cytotune.study.spec import load_study
from cytotune.tracking.schema import CellKey, parse_cell_key

SPACES = Path(__file__).resolve().parent.parent / "search_spaces"


def test_experiment_1_is_20_cells_300_trials():
    spec = load_study(SPACES / "exp1_linear_probe.yaml")
    cells = expand_cells(spec)
    trials = expand_trials(spec)
    assert len(cells) == 5 * 4 == 20
    assert len(trials) == 20 * 5 * 3 == 300
    assert set(Counter(t.cell_key for t in trials).values()) == {15}
    assert {t.config.method for t in trials} == {"linear_probe"}
    assert {t.config.lr for t in trials} == {1e-2, 3e-3, 1e-3, 3e-4, 1e-4}
    assert {t.config.seed for t in trials} == {1, 2, 3}
    assert all(t.config.shots is None and t.config.fraction is None for t in trials)


def test_experiment_2_is_120_cells_1800_trials():
    spec = load_study(SPACES / "exp2_lora_fewshot.yaml")
    cells = expand_cells(spec)
    trials = expand_trials(spec)
    assert len(cells) == 5 * 4 * 6 == 120
    assert len(trials) == 120 * 5 * 3 == 1800
    assert {t.config.shots for t in trials} == {1, 2, 4, 8, 16, 50}
    assert {t.config.lora.targets for t in trials} == {("q", "v")}
    assert {t.config.lora.rank for t in trials} == {2}
    assert all(t.resources == {"CPU": 4.0, "GPU": 1.0} for t in trials)


def test_experiment_3_is_20_fractions_300_trials():
    spec = load_study(SPACES / "exp3_lora_data_fraction.yaml")
    cells = expand_cells(spec)
    trials = expand_trials(spec)
    assert len(cells) == 1 * 1 * 20
    assert len(trials) == 20 * 5 * 3 == 300
    fractions = sorted({t.config.fraction for t in trials})
    assert fractions == pytest.approx([0.05 * k for k in range(1, 21)])
    assert {t.config.lora.targets for t in trials} == {("q", "k", "v", "o")}
    assert {(t.config.backbone, t.config.dataset, t.config.level) for t in trials} == {
        ("clip_vit_l14", "hicervix", 3)
    }


def test_rank_sweep_multiplies_experiment_2_cells_by_6_ranks():
    base = expand_cells(load_study(SPACES / "exp2_lora_fewshot.yaml"))
    sweep = load_study(SPACES / "exp2_rank_sweep.yaml")
    cells = expand_cells(sweep)
    assert len(cells) == len(base) * 6 == 720
    assert count_trials(cells) == len(expand_trials(sweep)) == 720 * 15
    ranks = Counter(cell.template.lora.rank for cell in cells)
    assert ranks == {r: 120 for r in (1, 2, 4, 8, 16, 32)}


def test_demo_has_both_methods():
    cells = expand_cells(load_study(SPACES / "demo.yaml"))
    assert Counter(c.block.method for c in cells) == {"linear_probe": 2, "lora": 4}
    assert count_trials(cells) == 24


def test_keys_are_stable_and_distinct():
    spec = load_study(SPACES / "exp2_rank_sweep.yaml")
    trials = expand_trials(spec)
    assert len({t.trial_key for t in trials}) == len(trials)
    assert trials[0].cell_key == "lora/clip_vit_b16/bcfc/shots=1/rank=1,targets=qv"
    assert trials[0].trial_key == "lora/clip_vit_b16/bcfc/shots=1/rank=1,targets=qv/lr=0.01/seed=1"
    assert [t.trial_key for t in expand_trials(spec)] == [t.trial_key for t in trials]
    assert all(t.trial_key.startswith(t.cell_key + "/") for t in trials)


def test_cell_keys_parse_back_into_their_parts():
    lora = expand_cells(load_study(SPACES / "exp2_rank_sweep.yaml"))[0].cell_key
    assert parse_cell_key(lora) == CellKey("lora", "clip_vit_b16", "bcfc", "shots=1", "rank=1,targets=qv")
    cells = expand_cells(load_study(SPACES / "demo.yaml"))
    probes = [parse_cell_key(c.cell_key) for c in cells if c.block.method == "linear_probe"]
    assert probes and all(p.block == "linear_probe" and p.settings == "" for p in probes)


def test_searched_lora_field_leaves_the_cell_key(tmp_path):
    text = (SPACES / "exp2_rank_sweep.yaml").read_text()
    text = text.replace("rank: [1, 2, 4, 8, 16, 32], ", "").replace(
        "lr: [1.0e-2", "lora.rank: [1, 2, 4, 8, 16, 32]\n      lr: [1.0e-2"
    )
    path = tmp_path / "rank_searched.yaml"
    path.write_text(text)
    spec = load_study(path)
    cells = expand_cells(spec)
    trials = expand_trials(spec)
    assert len(cells) == 120
    assert len(trials) == 120 * 6 * 5 * 3
    assert "rank" not in cells[0].cell_key
    assert "/lora.rank=4/lr=0.001/seed=2" in {t.trial_key[len(t.cell_key) :] for t in trials}


def test_ray_config_carries_keys_and_the_trial_config_through_pickling():
    trial = expand_trials(load_study(SPACES / "demo.yaml"))[0]
    config = pickle.loads(pickle.dumps(trial.ray_config()))  # as Tune keeps it in its experiment state
    assert config["trial_key"] == trial.trial_key and config["cell_key"] == trial.cell_key
    assert isinstance(config["trial"], TrialConfig) and config["trial"] == trial.config
    assert config["searched"] == {"lr": trial.config.lr}


def test_optuna_cells_count_but_list_no_trials_ahead(optuna_demo_study):
    spec = optuna_demo_study
    cells = expand_cells(spec)
    assert count_trials(cells) == 2 * 3 * 2 + 16
    with pytest.raises(CytotuneError, match="drawn by Optuna"):
        expand_trials(spec)


def test_gpu_asked_of_a_gpu_less_cluster():
    cells = expand_cells(load_study(SPACES / "exp2_lora_fewshot.yaml"))
    fit = fit_cells(cells, local_nodes(16, 0), "exp2.yaml")
    assert not fit.ok
    assert fit.problems == [
        "exp2.yaml: methods[0].resources.gpus: 1 GPU per trial asked, but the cluster has no GPU; expected "
        "gpus: 0 or allow_cpu_fallback: true"
    ]
    assert fit_cells(cells, local_nodes(16, 4), "exp2.yaml").ok
    too_small = fit_cells(cells, local_nodes(2, 4), "exp2.yaml")
    assert "no node has that much (largest: 2 CPU, 4 GPU)" in too_small.problems[0]


def test_cpu_fallback_drops_gpus_and_says_so(tmp_path):
    text = (
        (SPACES / "exp2_lora_fewshot.yaml")
        .read_text()
        .replace("{cpus: 4, gpus: 1}", "{cpus: 4, gpus: 1, allow_cpu_fallback: true}")
    )
    path = tmp_path / "fallback.yaml"
    path.write_text(text)
    fit = fit_cells(expand_cells(load_study(path)), local_nodes(4, 0), "fb.yaml")
    assert fit.ok
    assert fit.notes == ["fb.yaml: methods[0].resources: the cluster has no GPU; running lora trials on CPU"]
    assert {c.resources["GPU"] for c in fit.cells} == {0.0}
    assert {c.trial({"lr": 1e-3}, 1).config.train.device for c in fit.cells} == {"cpu"}


def test_duplicate_cells_from_two_blocks_need_names(tmp_path):
    text = (SPACES / "demo.yaml").read_text()
    block = text[text.index("  - method: linear_probe") : text.index("  - method: lora")]
    path = tmp_path / "dup.yaml"
    path.write_text(text.replace(block, block + block))
    with pytest.raises(CytotuneError, match=r"methods\[1\]: cell linear_probe/tiny_clip/synthetic/full also"):
        expand_cells(load_study(path))
    path.write_text(
        text.replace(
            block, block + block.replace("method: linear_probe", "method: linear_probe\n    name: probe2")
        )
    )
    assert len(expand_cells(load_study(path))) == 8


def test_baselines_study_is_280_cells_1940_trials():
    spec = load_study(SPACES / "exp_baselines.yaml")
    cells = expand_cells(spec)
    assert len(cells) == 20 + 20 + 120 + 120
    assert count_trials(cells) == 120 + 20 + 1440 + 360
    assert {c.template.method for c in cells} == {"knn", "simpleshot"}
    assert all(c.template.lr is None for c in cells)
