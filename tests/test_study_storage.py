"""Storage URIs go to Ray Tune as URIs (its pyarrow file systems); local folders stay local paths."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cytotune.cli import app
from cytotune.study.runner import experiment_path
from cytotune.study.spec import load_study
from cytotune.study.storage import is_uri, study_storage

STUDY = """
name: st
storage: {storage}
backbones: [tiny_clip]
datasets: [{{name: synthetic, root: data}}]
seeds: [1]
methods: [{{method: linear_probe, lr: 0.01}}]
"""


def study_at(tmp_path: Path, storage: str) -> Path:
    path = tmp_path / "st.yaml"
    path.write_text(STUDY.format(storage=storage))
    return path


@pytest.mark.parametrize("uri", ["s3://bucket/runs", "gs://bucket/a/b/", "file:///mnt/shared/ray"])
def test_a_uri_in_the_yaml_is_kept_as_written(tmp_path, uri):
    assert load_study(study_at(tmp_path, uri)).storage == uri


def test_a_remote_uri_never_becomes_a_local_path(tmp_path, monkeypatch):
    monkeypatch.setenv("CYTOTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    spec = load_study(study_at(tmp_path, "s3://bucket/runs"))
    store = study_storage(spec.name, None, spec.storage)
    assert (store.root, store.experiment, store.local) == ("s3://bucket/runs", "s3://bucket/runs/st", None)
    driver = experiment_path(spec, None)
    assert driver.parent == tmp_path / "cache" / "studies" and driver.name.startswith("st-")
    given = study_storage(spec.name, "gs://other/x/", spec.storage)
    assert given.experiment == "gs://other/x/st"
    result = CliRunner().invoke(app, ["run", str(study_at(tmp_path, "s3://bucket/runs")), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert not any(path.name.startswith(("s3:", "gs:")) for path in tmp_path.rglob("*"))


def test_file_uris_and_local_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spaced = study_storage("st", (tmp_path / "a b").as_uri())
    assert spaced.root == (tmp_path / "a b").as_uri() and spaced.local == tmp_path / "a b" / "st"
    (tmp_path / "a b" / "st").mkdir(parents=True)
    (tmp_path / "a b" / "st" / "tuner.pkl").write_bytes(b"x")
    assert spaced.exists("tuner.pkl") and not spaced.exists("other")
    local = study_storage("st", None, "runs")
    assert local.root == str(tmp_path / "runs") and local.experiment == str(tmp_path / "runs" / "st")
    assert study_storage("st", None).local == tmp_path / "ray_results" / "st"
    assert not is_uri("runs/s3://x") and not is_uri(Path("s3://bucket")) and is_uri("hdfs://nn:8020/x")


def test_the_storage_of_a_uri_is_asked_of_its_file_system(tmp_path):
    from pyarrow import fs

    mock = study_storage("st", "mock:///bucket")
    assert mock.local is None and mock.experiment == "mock:///bucket/st"
    assert not mock.exists("tuner.pkl")  # asked of pyarrow's in-memory file system, no local folder
    assert fs.FileSystem.from_uri(mock.experiment)[1] == "bucket/st"
