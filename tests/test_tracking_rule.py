"""One rule for the tracking store: --tracking-uri > $MLFLOW_TRACKING_URI > the YAML's > ./mlflow.db."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cytotune.cli import app, tracking_choice
from cytotune.errors import CytotuneError
from cytotune.study.grid import expand_cells
from cytotune.study.launch import study_callback
from cytotune.study.spec import load_study
from cytotune.tracking.uri import TrackingChoice, choose_tracking_uri

STUDY = """
name: rule
tracking_uri: sqlite:///from-yaml.db
backbones: [tiny_clip]
datasets: [{name: synthetic, root: data}]
seeds: [1]
methods: [{method: linear_probe, lr: 0.01}]
"""


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def test_flag_beats_environment_beats_yaml_beats_default(in_tmp, monkeypatch):
    default = f"sqlite:///{in_tmp.resolve() / 'mlflow.db'}"
    assert choose_tracking_uri().uri == default
    assert choose_tracking_uri(None, "sqlite:///y.db").uri == "sqlite:///y.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    env = choose_tracking_uri(None, "sqlite:///y.db")
    assert (env.uri, env.source) == ("http://127.0.0.1:1", "$MLFLOW_TRACKING_URI")
    flag = choose_tracking_uri("sqlite:///f.db", "sqlite:///y.db")
    assert flag.line() == "MLflow tracking: sqlite:///f.db (from --tracking-uri)"


def test_a_launch_says_where_it_tracks_when_it_starts(in_tmp, mlflow_sqlite_uri, capsys):
    path = in_tmp / "study.yaml"
    path.write_text(STUDY)
    spec = load_study(path)
    choice = tracking_choice(mlflow_sqlite_uri, spec.tracking_uri)
    callback = study_callback(spec, expand_cells(spec), choice.uri, announcement=choice.line())
    assert capsys.readouterr().err == ""
    callback.start_launch()
    callback.close()
    assert capsys.readouterr().err == f"MLflow tracking: {mlflow_sqlite_uri} (from --tracking-uri)\n"


def test_a_launch_follows_the_rule(in_tmp, monkeypatch):
    path = in_tmp / "study.yaml"
    path.write_text(STUDY)
    spec = load_study(path)
    assert tracking_choice(None, spec.tracking_uri).uri == "sqlite:///from-yaml.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{in_tmp / 'env.db'}")
    assert tracking_choice(None, spec.tracking_uri).uri == f"sqlite:///{in_tmp / 'env.db'}"
    assert tracking_choice("sqlite:///flag.db", spec.tracking_uri).uri == "sqlite:///flag.db"
    # a resume tracks where its launch did (recorded in the study's storage), whatever the rule says
    resumed = tracking_choice(None, spec.tracking_uri, launch="sqlite:///launch.db")
    assert resumed == TrackingChoice("sqlite:///launch.db", "the launch being resumed")


def test_commands_say_where_they_track_and_read_the_environment_s_store(in_tmp, monkeypatch):
    env_db = in_tmp / "env" / "mlflow.db"
    env_db.parent.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{env_db}")
    result = CliRunner().invoke(app, ["best", "--experiment", "x"])
    assert result.exit_code != 0
    assert result.stderr.splitlines()[0] == f"MLflow tracking: sqlite:///{env_db} (from $MLFLOW_TRACKING_URI)"
    assert isinstance(result.exception, CytotuneError)
    assert str(result.exception).startswith(f"tracking URI sqlite:///{env_db}: no such file")
    assert result.stdout == ""


def test_the_notebook_uses_the_same_rule():
    notebook = Path(__file__).resolve().parent.parent / "notebooks" / "analyze_study.ipynb"
    code = "".join(line for cell in json.loads(notebook.read_text())["cells"] for line in cell["source"])
    assert "TRACKING = choose_tracking_uri()" in code
    assert 'os.environ.get("MLFLOW_TRACKING_URI")' not in code
