"""MLflow as its users expect: standard source tags on launch and trial runs, the trial's dataset as a run
input with its manifest digest as a param."""

from __future__ import annotations

import getpass
import json
import subprocess
from pathlib import Path

from mlflow import MlflowClient
from tracking_fakes import FakeTrial, plans, write_study

from cytotune.tracking.callback import MlflowCallback

REPO = Path(__file__).resolve().parent.parent


def dataset_result(root: Path, step: int) -> dict:
    return {
        "step": step,
        "val_acc": 0.5,
        "best_val_acc": 0.5,
        "dataset_name": "herlev",
        "dataset_digest": "ab" * 20,
        "dataset_root": str(root),
        "dataset_train": 8,
        "dataset_val": 3,
        "dataset_test": 5,
    }


def trial_run(callback: MlflowCallback, plan, trial_id: str, root: Path) -> str:
    trial = FakeTrial(trial_id, plan.ray_config())
    callback.on_trial_start(0, [], trial)
    for step in (10, 20):
        callback.on_trial_result(0, [], trial, dataset_result(root, step))
    callback.wait()
    return callback._runs[trial_id]


def test_runs_carry_source_tags_and_the_dataset_they_saw(tmp_path, mlflow_sqlite_uri):
    yaml_path = write_study(tmp_path, "sources")
    plan = plans(yaml_path)[0]
    callback = MlflowCallback("sources", mlflow_sqlite_uri, study_yaml=yaml_path.read_text())
    launch = callback.start_launch()
    run_id = trial_run(callback, plan, "t1", tmp_path / "herlev")
    callback.close()

    client = MlflowClient(mlflow_sqlite_uri)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    for run in (client.get_run(launch), client.get_run(run_id)):
        tags = run.data.tags
        assert tags["mlflow.user"] == getpass.getuser()
        assert tags["mlflow.source.git.commit"] == commit.stdout.strip()
        assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]
    run = client.get_run(run_id)
    assert run.data.params["dataset_digest"] == "ab" * 20 and run.data.params["dataset"] == "synthetic"
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1
    dataset = inputs[0].dataset
    assert (dataset.name, dataset.digest, dataset.source_type) == ("herlev", "ab" * 8, "local")
    assert json.loads(dataset.source) == {"uri": (tmp_path / "herlev").resolve().as_uri()}
    assert json.loads(dataset.profile) == {"train": 8, "val": 3, "test": 5}
    assert [(t.key, t.value) for t in inputs[0].tags] == [("mlflow.data.context", "trial")]


def test_a_resumed_trial_logs_its_dataset_once(tmp_path, mlflow_sqlite_uri):
    yaml_path = write_study(tmp_path, "sources-resume")
    plan = plans(yaml_path)[0]
    first = MlflowCallback("sources-resume", mlflow_sqlite_uri, study_yaml=yaml_path.read_text())
    run_id = trial_run(first, plan, "t1", tmp_path / "herlev")
    again = MlflowCallback("sources-resume", mlflow_sqlite_uri, study_yaml=yaml_path.read_text(), resume=True)
    again.setup()
    assert trial_run(again, plan, "t1", tmp_path / "herlev") == run_id
    again.close()
    run = MlflowClient(mlflow_sqlite_uri).get_run(run_id)
    assert len(run.inputs.dataset_inputs) == 1
    # the first driver died before its first flush: the resumed launch writes the trial's params
    assert run.data.params["lr"] == str(plan.config.lr) and run.data.params["dataset_digest"] == "ab" * 20


def test_a_rerun_study_keeps_each_dataset_s_name_and_layout(tmp_path, mlflow_sqlite_uri):
    from tracking_fakes import STUDY_YAML, run_fake_study

    from cytotune.study.grid import expand_trials
    from cytotune.study.spec import load_study
    from cytotune.tracking.rerun import write_rerun

    named = "{name: herlev, layout: folder, root: h}"
    text = STUDY_YAML.format(name="named").replace("{root: synthetic}", named)
    path = tmp_path / "named.yaml"
    path.write_text(text)
    callback = MlflowCallback("named", mlflow_sqlite_uri, study_yaml=text)
    run_fake_study(callback, plans(path), tmp_path / "ckpt")
    again = expand_trials(load_study(write_rerun("named", tmp_path / "rerun.yaml", mlflow_sqlite_uri)))
    assert {(t.config.dataset, t.config.layout, t.config.root) for t in again} == {
        ("herlev", "folder", tmp_path / "h")
    }
    assert {t.cell_key.split("/")[2] for t in again} == {"herlev"}
