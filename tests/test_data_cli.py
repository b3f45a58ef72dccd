"""`cytotune data synth|prepare|info` and `cytotune bench data`, in process, and one error through main()."""

from __future__ import annotations

import re
import sys

import pytest
from data_layouts import make_bcfc
from typer.testing import CliRunner

from cytotune.cli import app, main

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("isolated_cache")


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_synth_prepare_info(tmp_path, isolated_cache):
    out = tmp_path / "syn"
    assert "wrote 3 classes x 10 png images of 32px" in invoke(
        "data", "synth", str(out), "--classes", "3", "--per-class", "10", "--size", "32", "--seed", "2"
    )
    prepared = invoke("data", "prepare", "synthetic", "--root", str(out), "--cache-size", "24")
    assert "synthetic: 30 images in 3 classes, split 0.7/0.1/0.2 (seed 0)" in prepared
    lines = prepared.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split() == ["train", "val", "test", "total"])
    assert lines[header + 1].split() == ["class_0", "7", "1", "2", "10"]
    assert lines[header + 4].split() == ["total", "21", "3", "6", "30"]
    assert "image cache: 30 images at 24px, built in" in prepared
    assert len(list((isolated_cache / "images").glob("synthetic-*-train24-v2.u8"))) == 1
    again = invoke("data", "prepare", "synthetic", "--root", str(out), "--cache-size", "24")
    assert "24px, reused" in again
    info = invoke("data", "info", "synthetic", "--root", str(out))
    assert "class_2: 10 images" in info and "digest" in info and "-train24-v2.u8" in info


def test_prepare_options(tmp_path):
    root = make_bcfc(tmp_path / "bcfc", per_class=10)
    output = invoke(
        "data",
        "prepare",
        "bcfc",
        "--root",
        str(root),
        "--split",
        "0.6,0.2,0.2",
        "--split-seed",
        "3",
        "--cache-size",
        "16",
    )
    assert "split 0.6/0.2/0.2 (seed 3)" in output
    assert "not prepared" in invoke("data", "info", "bcfc", "--root", str(root))
    assert "split 0.6/0.2/0.2" in invoke(
        "data", "info", "bcfc", "--root", str(root), "--split", "0.6,0.2,0.2", "--split-seed", "3"
    )


def test_bench_data_prints_both_times_and_the_ratio():
    output = invoke(
        "bench",
        "data",
        "--image-size",
        "48",
        "--per-class",
        "4",
        "--size",
        "32",
        "--input-size",
        "24",
        "--batch-size",
        "4",
        "--repeats",
        "1",
    )
    assert "eval:  PIL + torchvision per item" in output and "eval cache batch + eval_transform" in output
    assert "train: PIL + torchvision per item" in output and "training view + train_transform" in output
    assert (
        "training view, shorter side 32px (built in" in output and "evaluation view 24px (built in" in output
    )
    assert re.search(r"ratio: eval \d+\.\dx, train \d+\.\dx faster than PIL", output)
    assert "synthetic, 4 x 4 JPG images of 48px" in output


def test_user_error_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        sys, "argv", ["cytotune", "data", "prepare", "mlcc", "--root", str(tmp_path / "absent")]
    )
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1
    assert stderr.startswith("cytotune: error: dataset root ") and "does not exist" in stderr
