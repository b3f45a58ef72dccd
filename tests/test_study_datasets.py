"""Datasets named apart from their layout: two `folder` datasets in one study, keys and params by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import study_yaml
from data_layouts import write_image
from study_yaml import write

from cytotune.study.grid import expand_cells, expand_trials
from cytotune.study.prepare import check_registries, prepare_data
from cytotune.study.spec import load_study
from cytotune.tracking.schema import flatten_trial

TWO_FOLDERS = """
name: own
backbones: [tiny_clip]
datasets:
  - {name: herlev, layout: folder, root: herlev}
  - {name: cric, layout: folder, root: cric}
seeds: [1]
methods:
  - method: linear_probe
    lr: 0.01
"""


def error_of(tmp_path: Path, text: str) -> str:
    return study_yaml.error_of(tmp_path, text, check_registries)


def make_folder(root: Path, classes: tuple[str, ...], per_class: int, seed: int) -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            write_image(root / name / f"{i}.png", seed=seed + 100 * c + i, size=(16, 16))
    return root


def test_two_folder_datasets_make_cells_and_trials_named_by_dataset(tmp_path):
    spec = load_study(write(tmp_path, TWO_FOLDERS))
    check_registries(spec)
    cells = expand_cells(spec)
    keys = ["linear_probe/tiny_clip/herlev/full", "linear_probe/tiny_clip/cric/full"]
    assert [c.cell_key for c in cells] == keys
    trials = expand_trials(spec)
    assert [(t.config.dataset, t.config.layout, t.config.root) for t in trials] == [
        ("herlev", "folder", tmp_path / "herlev"),
        ("cric", "folder", tmp_path / "cric"),
    ]
    params = flatten_trial(trials[1].ray_config()["trial"])
    assert params["dataset"] == "cric" and params["layout"] == "folder"


def test_prepare_lists_each_named_dataset_with_its_layout(tmp_path):
    make_folder(tmp_path / "herlev", ("a", "b"), per_class=10, seed=0)
    make_folder(tmp_path / "cric", ("x", "y", "z"), per_class=10, seed=5000)
    spec = load_study(write(tmp_path, TWO_FOLDERS))
    said: list[str] = []
    cache = tmp_path / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CYTOTUNE_CACHE", str(cache))
        prepare_data(spec, expand_cells(spec), features=False, say=said.append)
    assert said == [
        f"preparing herlev (folder layout) at {tmp_path / 'herlev'}",
        f"preparing cric (folder layout) at {tmp_path / 'cric'}",
    ]


def test_layout_defaults_to_the_name_so_registry_names_still_work(tmp_path):
    text = TWO_FOLDERS.replace("layout: folder, ", "").replace("herlev", "folder")
    spec = load_study(write(tmp_path, text))
    entry = spec.datasets[0]
    assert (entry.dataset, entry.layout, entry.registered_layout) == ("folder", None, "folder")
    assert error_of(tmp_path, TWO_FOLDERS.replace("layout: folder, ", "")) == (
        "datasets[0].name: unknown dataset 'herlev'; expected one of: bcfc, folder, hicervix, mlcc, "
        "sipakmed, synthetic (a dataset of your own: `layout: folder` and any `name`)"
    )
    text = TWO_FOLDERS.replace("layout: folder, root: cric", "layout: tiff, root: cric")
    assert error_of(tmp_path, text) == (
        "datasets[1].layout: unknown layout 'tiff'; expected one of: bcfc, folder, hicervix, mlcc, sipakmed, "
        "synthetic (a dataset of your own: `layout: folder` and any `name`)"
    )


def test_two_entries_with_one_name_are_refused(tmp_path):
    text = TWO_FOLDERS.replace("name: cric", "name: herlev")
    assert error_of(tmp_path, text) == (
        "datasets: name 'herlev' is given twice ([0] and [1]); expected a distinct `name` for each dataset "
        "(the layout goes in `layout`)"
    )


def test_one_name_stands_for_one_dataset_across_blocks(tmp_path):
    text = TWO_FOLDERS + (
        "  - method: lora\n    name: lora_herlev\n    lr: 0.01\n"
        "    datasets: [{name: herlev, layout: folder, root: elsewhere}]\n"
    )
    assert error_of(tmp_path, text) == (
        "methods[1].datasets[0]: name 'herlev' is also datasets[0] with another root; expected one "
        "dataset per name"
    )
    same = text.replace("root: elsewhere", "root: herlev, level: 3")
    assert len(expand_cells(load_study(write(tmp_path, same)))) == 3


def test_a_name_is_a_key_part(tmp_path):
    assert error_of(tmp_path, TWO_FOLDERS.replace("name: cric", "name: cric/2")) == (
        "datasets[1].name: expected a string matching ^[A-Za-z0-9_.-]+$, got 'cric/2'"
    )


def test_a_trial_reads_its_named_dataset_through_its_layout(tmp_path):
    from cytotune.config import TrialConfig
    from cytotune.train.trial_data import trial_data

    root = make_folder(tmp_path / "herlev", ("a", "b"), per_class=10, seed=0)
    cfg = TrialConfig(
        method="linear_probe",
        backbone="tiny_clip",
        dataset="herlev",
        layout="folder",
        root=root,
        lr=0.1,
        cache_dir=tmp_path / "cache",
    )
    data = trial_data(cfg)
    assert data.manifest.classes == ("a", "b")
    assert len(data.train) + len(data.val) + len(data.test) == 20
    assert cfg.model_copy(update={"layout": None}).dataset_layout == "herlev"


def test_train_takes_a_named_dataset_and_its_layout(tmp_path):
    import json

    from typer.testing import CliRunner

    from cytotune.cli import app

    root = make_folder(tmp_path / "herlev", ("a", "b"), per_class=10, seed=0)
    args = ["train", "--method", "linear_probe", "--backbone", "tiny_clip", "--dataset", "herlev"]
    args += ["--layout", "folder", "--root", str(root), "--lr", "0.1", "--probe-epochs", "2"]
    args += ["--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--cache-dir", str(tmp_path / "cache"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["classes"] == ["a", "b"]
    unknown = CliRunner().invoke(app, [*args[:7], "--root", str(root), "--lr", "0.1"])
    assert "unknown dataset 'herlev'" in str(unknown.exception)
