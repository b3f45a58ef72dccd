"""Results on stdout, progress on stderr; `--json` for run, run --dry-run, data info, backbones; --version."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cytotune.cli import app
from cytotune.study.runner import StudyOutcome, TrialOutcome

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("CYTOTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_version_is_the_package_s():
    version = re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert invoke("--version").stdout == f"{version}\n"


def test_backbones_json_has_the_table_s_rows():
    records = json.loads(invoke("backbones", "--json").stdout)
    table = invoke("backbones").stdout.splitlines()[1:]
    assert [r["name"] for r in records] == [line.split()[0] for line in table]
    tiny = next(r for r in records if r["name"] == "tiny_clip")
    row = next(line for line in table if line.startswith("tiny_clip "))
    assert f" {tiny['input_size']} " in row and f" {tiny['feature_dim']} {tiny['feature']} " in row
    assert isinstance(tiny["input_size"], int) and tiny["test_size"] is True


def test_data_info_json_before_and_after_prepare(tmp_path):
    root = tmp_path / "syn"
    invoke("data", "synth", str(root), "--classes", "3", "--per-class", "10", "--size", "16")
    facts = json.loads(invoke("data", "info", "synthetic", "--root", str(root), "--json").stdout)
    assert facts["classes"] == {"class_0": 10, "class_1": 10, "class_2": 10}
    assert facts["manifest"] is None and facts["image_caches"] == []
    invoke("data", "prepare", "synthetic", "--root", str(root), "--cache-size", "16")
    facts = json.loads(invoke("data", "info", "synthetic", "--root", str(root), "--json").stdout)
    manifest = facts["manifest"]
    assert manifest["images"] == 30 and manifest["split"] == [0.7, 0.1, 0.2]
    assert manifest["counts"]["class_1"] == {"train": 7, "val": 1, "test": 2, "total": 10}
    assert len(manifest["digest"]) == 40 and facts["image_caches"][0].endswith("-train16-v2.u8")


def test_the_split_option_defaults_to_the_trial_config_s_split():
    from cytotune.cli import SPLIT_TEXT
    from cytotune.config import DEFAULT_SPLIT, TrialConfig
    from cytotune.data.summary import parse_split

    assert parse_split(SPLIT_TEXT) == DEFAULT_SPLIT == TrialConfig.model_fields["split"].default


def test_dry_run_json_is_the_plan_the_text_shows():
    space = str(REPO / "search_spaces" / "demo.yaml")
    plan = json.loads(invoke("run", space, "--dry-run", "--json").stdout)
    text = invoke("run", space, "--dry-run").stdout
    head = re.match(r"study demo \(.*\): (\d+) cells, (\d+) trials", text)
    assert (plan["n_cells"], plan["n_trials"]) == (int(head.group(1)), int(head.group(2)))
    assert sum(cell["trials"] for cell in plan["cells"]) == plan["n_trials"]
    assert plan["can_run"] is ("can run: yes" in text)
    for cell in plan["cells"]:
        assert re.search(rf"^{re.escape(cell['cell_key'])}\s+{cell['trials']}\s", text, re.M)


def test_run_json_prints_only_the_summary_on_stdout(tmp_path, monkeypatch):
    import cytotune.study.runner as runner_module

    def fake_run_study(spec, *, say, **kwargs):
        say("preparing synthetic at somewhere")
        trial = TrialOutcome(
            "k/seed=1", "k", "finished", {}, {"lr": 0.1}, {"test_acc": 0.5, "best_val_acc": float("nan")}
        )
        return StudyOutcome(
            spec.name, tmp_path / "ray" / spec.name, [trial], 12.0, tracking_uri=kwargs["tracking_uri"]
        )

    monkeypatch.setattr(runner_module, "run_study", fake_run_study)
    result = invoke("run", str(REPO / "search_spaces" / "demo.yaml"), "--json")
    summary = json.loads(result.stdout)
    assert summary["counts"] == {"finished": 1, "stopped": 0, "failed": 0, "unfinished": 0}
    assert summary["results"][0]["test_acc"] == 0.5 and summary["results"][0]["best_val_acc"] is None
    assert summary["mlflow"]["tracking_uri"] == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert result.stderr.splitlines() == [
        "preparing synthetic at somewhere",
        "study demo: 1 trials (1 finished, 0 stopped early, 0 failed) in 12 s; "
        f"Ray results in {tmp_path}/ray/demo",
        f"MLflow: experiment demo at {summary['mlflow']['tracking_uri']} (see `cytotune best`)",
    ]
    plain = invoke("run", str(REPO / "search_spaces" / "demo.yaml"))
    assert plain.stdout.startswith("study demo: 1 trials (1 finished") and "preparing" in plain.stderr


def test_a_launch_expands_its_study_once_and_hands_that_plan_to_the_runner_and_mlflow(tmp_path, monkeypatch):
    import cytotune.study.grid as grid
    import cytotune.study.launch as launch
    import cytotune.study.runner as runner_module

    expanded: list = []
    given: dict = {}
    expand, callback = grid.expand_cells, launch.study_callback

    def counting(spec):
        expanded.append(expand(spec))
        return expanded[-1]

    def recording_callback(spec, cells, *args, **kwargs):
        given["callback"] = cells
        return callback(spec, cells, *args, **kwargs)

    def fake_run_study(spec, *, cells, **kwargs):
        given["runner"] = cells
        return StudyOutcome(spec.name, tmp_path / "ray", [], 1.0, tracking_uri=kwargs["tracking_uri"])

    for module in (grid, runner_module):
        monkeypatch.setattr(module, "expand_cells", counting)
    monkeypatch.setattr(launch, "study_callback", recording_callback)
    monkeypatch.setattr(runner_module, "run_study", fake_run_study)
    space = str(REPO / "search_spaces" / "demo.yaml")
    invoke("run", space, "--json")
    assert len(expanded) == 1 and given["runner"] is given["callback"] is expanded[0]
    expanded.clear()
    invoke("run", space, "--dry-run")
    assert len(expanded) == 1
