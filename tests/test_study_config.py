"""Study YAML loading: typed spec, paths, and one-line errors naming the file, field and expectation."""

from __future__ import annotations

from pathlib import Path

import pytest
from study_yaml import error_of, write

from cytotune.errors import CytotuneError
from cytotune.study.spec import LoraGrid, OptunaDimension, load_study

SPACES = Path(__file__).resolve().parent.parent / "search_spaces"

BASE = """
name: t
backbones: [tiny_clip]
datasets: [{name: synthetic, root: data/synth}]
methods:
  - method: lora
    shots: [1, 2]
    search: {lr: [0.01, 0.001]}
"""


@pytest.mark.parametrize(
    "name",
    [
        "exp1_linear_probe",
        "exp2_lora_fewshot",
        "exp3_lora_data_fraction",
        "exp2_rank_sweep",
        "demo",
        "demo_baselines",
        "exp_baselines",
        "exp2_lora_fewshot_packed",
        "demo_packed",
    ],
)
def test_shipped_spaces_load(name):
    spec = load_study(SPACES / f"{name}.yaml")
    assert spec.name == name
    assert spec.source == SPACES / f"{name}.yaml"


def test_relative_roots_resolve_against_the_yaml_folder_or_data_dir(tmp_path):
    spec = load_study(write(tmp_path, BASE))
    assert spec.datasets[0].root == tmp_path / "data" / "synth"
    spec = load_study(write(tmp_path, "data_dir: ../elsewhere\nstorage: runs\n" + BASE))
    assert spec.datasets[0].root == tmp_path.parent / "elsewhere" / "data" / "synth"
    assert spec.datasets[0].dataset == "synthetic"
    assert spec.storage == str(tmp_path / "runs")


def test_dataset_name_defaults_to_the_root_folder(tmp_path):
    spec = load_study(write(tmp_path, BASE.replace("{name: synthetic, root: data/synth}", "{root: x/bcfc}")))
    assert spec.datasets[0].dataset == "bcfc"


def test_lora_fields_take_one_value_or_a_grid():
    grid = LoraGrid(rank=[1, 2], targets=["q", "v"], alpha=1)
    assert grid.rank == (1, 2) and grid.targets == (("q", "v"),) and grid.alpha == (1,)
    assert LoraGrid(targets=[["q", "v"], ["q", "k", "v", "o"]]).targets == (("q", "v"), ("q", "k", "v", "o"))


def test_bad_lora_rank_names_file_field_and_expectation(tmp_path):
    text = BASE + "    lora: {rank: abc}\n"
    assert error_of(tmp_path, text) == (
        "methods[0].lora.rank: expected a positive integer or a list of them, got 'abc'"
    )


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            ("    shots: [1, 2]", "    shots: [0]"),
            "methods[0].shots: expected a positive integer",
        ),
        (
            ("method: lora", "method: lorra"),
            "methods[0].method: expected 'linear_probe', 'lora', 'knn', 'simpleshot' or 'zero_shot'",
        ),
        (
            ("    shots: [1, 2]", "    shots: [1]\n    colour: red"),
            "methods[0].colour: unknown field",
        ),
        (("{lr: [0.01, 0.001]}", "{lr: [-1]}"), "methods[0].search: lr: expected greater than 0, got -1"),
        (
            ("{lr: [0.01, 0.001]}", "{depth: [1]}"),
            "methods[0].search: cannot search 'depth'",
        ),
        (("{lr: [0.01, 0.001]}", "{}"), "methods[0]: expected `lr` or a search over lr"),
        (
            ("{lr: [0.01, 0.001]}", "{lr: {optuna: loguniform, low: 0, high: 1}}\n    samples: 2"),
            "methods[0].search: lr: expected low > 0 for a loguniform distribution, got 0",
        ),
        (
            ("{lr: [0.01, 0.001]}", "{lr: {optuna: loguniform, low: 1.0e-4, high: 1.0e-2}}"),
            "methods[0]: expected `samples`",
        ),
        (
            ("{lr: [0.01, 0.001]}", "{lr: [0.01, 0.001]}\n    optuna: {startup: 2}"),
            "methods[0]: `optuna` settings are for optuna searches; expected none with a grid search",
        ),
        (
            (
                "{lr: [0.01, 0.001]}",
                "{lr: {optuna: loguniform, low: 1.0e-4, high: 1.0e-2}}\n"
                "    samples: 4\n    optuna: {startup: 5}",
            ),
            "methods[0]: optuna.startup: expected at most samples (4), got 5",
        ),
        (("name: t", "name: 't t'"), "name: expected a string matching ^[A-Za-z0-9_.-]+$, got 't t'"),
        (
            ("    shots: [1, 2]", "    shots: [1]\n    train: {batch_size: 0}"),
            "methods[0].train.batch_size: expected greater than or equal to 1, got 0",
        ),
        (
            ("    shots: [1, 2]", "    shots: [1]\n    asha: {grace_period: 50, max_steps: 10}"),
            "methods[0].asha: expected grace_period <= max_steps, got 50 > 10",
        ),
        (
            ("    shots: [1, 2]", "    shots: [1]\n    resources: {gpus: 1.5}"),
            "methods[0].resources.gpus: expected a fraction below 1 or a whole number of GPUs, got 1.5",
        ),
        (("backbones: [tiny_clip]\n", ""), "methods[0].backbones: missing; expected it here or at top level"),
    ],
)
def test_bad_fields(tmp_path, edit, expected):
    old, new = edit
    assert old in BASE
    message = error_of(tmp_path, BASE.replace(old, new))
    assert message.startswith(expected), message


def test_not_yaml_and_not_a_mapping(tmp_path):
    assert error_of(tmp_path, "name: [unclosed").startswith("not valid YAML")
    assert error_of(tmp_path, "- a\n- b\n") == "expected a mapping of study fields, got list"
    with pytest.raises(CytotuneError, match="cannot read the study file"):
        load_study(tmp_path / "missing.yaml")


def test_optuna_dimension_validation():
    assert OptunaDimension(optuna="int", low=1, high=8).high == 8
    with pytest.raises(ValueError, match="choices"):
        OptunaDimension(optuna="categorical", low=1, high=2)


BASELINES = """
name: b
backbones: [tiny_clip]
datasets: [{name: synthetic, root: data/synth}]
methods:
  - method: knn
    shots: [1, 4]
    search: {k: [1, 5, 20]}
  - method: simpleshot
"""


def test_baseline_blocks_search_k_and_need_no_lr(tmp_path):
    from cytotune.study.grid import expand_cells, expand_trials

    spec = load_study(write(tmp_path, BASELINES))
    cells = expand_cells(spec)
    assert [c.cell_key for c in cells] == [
        "knn/tiny_clip/synthetic/shots=1",
        "knn/tiny_clip/synthetic/shots=4",
        "simpleshot/tiny_clip/synthetic/full",
    ]
    trials = expand_trials(spec)
    assert len(trials) == 2 * 3 * 3 + 3
    knn = trials[0]
    assert knn.trial_key == "knn/tiny_clip/synthetic/shots=1/k=1/seed=1"
    assert (knn.config.k, knn.config.lr, knn.searched) == (1, None, {"k": 1})
    assert trials[-1].config.k is None and trials[-1].config.lr is None


@pytest.mark.parametrize(
    "block,message",
    [
        ("  - method: knn\n", "methods[0]: expected `k` or a search over k"),
        ("  - {method: knn, k: 3, search: {k: [1, 2]}}\n", "methods[0]: k is both fixed and searched"),
        ("  - {method: simpleshot, lr: 0.1}\n", "methods[0]: lr: simpleshot does not use it"),
        ("  - {method: knn, k: 3, search: {lr: [0.1]}}\n", "methods[0]: lr: knn does not use it"),
        ("  - {method: linear_probe, lr: 0.1, k: 3}\n", "k: linear_probe does not use it (knn only)"),
        ("  - {method: knn, search: {k: [0, 2]}}\n", "methods[0].search: k: "),
    ],
)
def test_baseline_fields_misused_give_one_line(tmp_path, block, message):
    head = "name: b\nbackbones: [tiny_clip]\ndatasets: [{name: s, root: d}]\nmethods:\n"
    assert message in error_of(tmp_path, head + block)
