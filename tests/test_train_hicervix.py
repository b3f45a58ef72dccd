"""HiCervix at levels 1, 2 and 3 through both trainers on a generated official layout (CSVs + image folders).

Expected classes and counts are worked out by hand from the rows below, with the paper's code's level rule
(level 3 = level_3, else level_2; rows without a label at the level are dropped).
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
from data_layouts import make_hicervix

from cytotune.config import TrainSettings, TrialConfig
from cytotune.errors import CytotuneError
from cytotune.train import run_trial

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# (level_1, level_2, level_3) -> images in (train, val, test); HSIL-2 has 2 training images only
PATTERNS = {
    ("NILM", "", ""): (4, 2, 2),
    ("ASC", "ASC-US", ""): (4, 2, 2),
    ("ASC", "ASC-H", ""): (3, 2, 2),
    ("SIL", "LSIL", "LSIL-koilo"): (4, 2, 2),
    ("SIL", "HSIL", "HSIL-2"): (2, 2, 2),
    ("SIL", "HSIL", "HSIL-3"): (4, 4, 2),
    ("", "", ""): (1, 1, 1),  # no label at any level: dropped
}
# by hand from PATTERNS: classes (sorted) and labelled (train, val, test) rows at each level
EXPECTED = {
    1: (["ASC", "NILM", "SIL"], (21, 14, 12)),
    2: (["ASC-H", "ASC-US", "HSIL", "LSIL"], (17, 12, 10)),
    3: (["ASC-H", "ASC-US", "HSIL-2", "HSIL-3", "LSIL-koilo"], (17, 12, 10)),
}


@pytest.fixture(scope="module")
def hicervix(tmp_path_factory) -> Path:
    rows: dict[str, list[tuple[str, str, str, str]]] = {"train": [], "val": [], "test": []}
    for p, (labels, counts) in enumerate(PATTERNS.items()):
        for split, count in zip(rows, counts, strict=True):
            rows[split] += [(f"{split}_{p}_{i}.jpg", *labels) for i in range(count)]
    return make_hicervix(tmp_path_factory.mktemp("hicervix"), rows)


def trial(root: Path, cache: Path, level: int, method: str = "linear_probe", **fields) -> TrialConfig:
    train = {"image_cache_size": 32, "warmup_steps": 2, "probe_epochs": 3, "device": "cpu", "batch_size": 8}
    train.update(fields.pop("train", {}))
    return TrialConfig(
        method=method,
        backbone="tiny_clip",
        dataset="hicervix",
        root=root,
        level=level,
        lr=1e-2,
        seed=1,
        cache_dir=cache,
        train=TrainSettings(**train),
        **fields,
    )


def roles(manifest: Path) -> dict[str, Counter]:
    """Per role (train/val/test), how many rows of each label the trial used."""
    out: dict[str, Counter] = {"train": Counter(), "val": Counter(), "test": Counter()}
    with manifest.open() as handle:
        for row in csv.DictReader(handle):
            out[row["role"]][int(row["label"])] += 1
    return out


@pytest.mark.parametrize("level", [1, 2, 3])
def test_probe_at_each_level_uses_the_level_classes_and_official_splits(hicervix, tmp_path, level):
    classes, (n_train, n_val, n_test) = EXPECTED[level]
    result = run_trial(trial(hicervix, tmp_path / "cache", level), out_dir=tmp_path / "out")
    assert result.classes == classes
    assert len(result.confusion_matrix) == len(classes)
    assert sum(map(sum, result.confusion_matrix)) == n_test
    used = roles(result.artifacts["trial_manifest.csv"])
    assert (sum(used["train"].values()), sum(used["val"].values()), sum(used["test"].values())) == (
        n_train,
        n_val,
        n_test,
    )


def test_lora_few_shot_at_level_2_with_fewshot_validation(hicervix, tmp_path):
    """3 shots per class from train; validation min(3, 4) = 3 per class from val, or all a class has (2)."""
    cfg = trial(
        hicervix,
        tmp_path / "cache",
        2,
        method="lora",
        shots=3,
        train={"max_steps": 4, "eval_every": 2, "validation": "fewshot"},
    )
    result = run_trial(cfg, out_dir=tmp_path / "out")
    assert result.classes == EXPECTED[2][0] and result.steps == 4
    used = roles(result.artifacts["trial_manifest.csv"])
    # labels are class indices in sorted order: ASC-H, ASC-US, HSIL, LSIL
    assert used["train"] == {0: 3, 1: 3, 2: 3, 3: 3}
    assert used["val"] == {0: 2, 1: 2, 2: 3, 3: 2}  # HSIL has 6 val images, the others 2
    assert sum(used["test"].values()) == EXPECTED[2][1][2]


@pytest.mark.parametrize("method", ["lora", "linear_probe"])
def test_a_class_with_fewer_images_than_the_shots_is_named(hicervix, tmp_path, method):
    """Level 3 splits HSIL into HSIL-2 (2 training images) and HSIL-3: 3 shots cannot be drawn without
    repeating images, which cytotune refuses (the authors' code drew with replacement)."""
    cfg = trial(hicervix, tmp_path / "cache", 3, method=method, shots=3, train={"max_steps": 2})
    with pytest.raises(CytotuneError) as err:
        run_trial(cfg, out_dir=tmp_path / "out")
    message = str(err.value)
    assert "\n" not in message
    assert "'HSIL-2' has 2 training images" in message and "shots=3" in message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_repeat_option_draws_a_short_class_with_repeats(hicervix, tmp_path):
    """`short_class: repeat`: HSIL-2's 2 training images fill its 3 shots, one of them twice."""
    settings = {"max_steps": 2, "short_class": "repeat"}
    cfg = trial(hicervix, tmp_path / "cache", 3, method="lora", shots=3, train=settings)
    result = run_trial(cfg, out_dir=tmp_path / "out")
    with result.artifacts["trial_manifest.csv"].open() as handle:
        train = [row for row in csv.DictReader(handle) if row["role"] == "train"]
    per_class = Counter(result.classes[int(row["label"])] for row in train)
    assert per_class == dict.fromkeys(EXPECTED[3][0], 3)
    hsil2 = Counter(row["path"] for row in train if result.classes[int(row["label"])] == "HSIL-2")
    assert sorted(hsil2.values()) == [1, 2]


def test_a_study_checks_the_shots_before_it_runs(hicervix, tmp_path, monkeypatch):
    """`cytotune run` prepares the data first: too many shots for HSIL-2 stop it there, unless repeated."""
    from cytotune.study.grid import expand_cells
    from cytotune.study.prepare import prepare_data
    from cytotune.study.spec import load_study

    monkeypatch.setenv("CYTOTUNE_CACHE", str(tmp_path / "cache"))
    text = f"""
name: short
backbones: [tiny_clip]
datasets: [{{name: hicervix, root: {hicervix}, level: 3}}]
train: {{image_cache_size: 32}}
methods:
  - {{method: lora, shots: [3], lr: 0.01}}
"""
    path = tmp_path / "short.yaml"
    path.write_text(text)
    spec = load_study(path)
    named = r"3 shots per class, but class 'HSIL-2' of hicervix has 2 train images.*short_class: repeat"
    with pytest.raises(CytotuneError, match=named):
        prepare_data(spec, expand_cells(spec), features=False, say=lambda line: None)
    path.write_text(text.replace("image_cache_size: 32", "image_cache_size: 32, short_class: repeat"))
    spec = load_study(path)
    prepare_data(spec, expand_cells(spec), features=False, say=lambda line: None)
