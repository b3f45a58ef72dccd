"""`cytotune bench gpu`: the case plan, a real run of its code paths on a tiny backbone on the CPU, and the
one line a machine without a GPU gets."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from cytotune.bench.gpu import GpuCase, plan_cases
from cytotune.cli import app, main


def test_plan_has_the_baselines_and_each_switch_once_at_the_largest_batch():
    cases = plan_cases(["b16", "l14"], [32, 4, 256], 512)
    for name in ("b16", "l14"):
        mine = [c for c in cases if c.backbone == name]
        assert GpuCase(name, "features", 512) in mine
        assert {c.batch for c in mine if c.task == "lora" and c.label() == "baseline"} == {4, 32, 256}
        for task, batch in (("features", 512), ("lora", 256)):
            switched = {c.label() for c in mine if c.task == task and c.label() != "baseline"}
            assert switched == {"math attention", "channels-last", "compile"}
            assert all(c.batch == batch for c in mine if c.task == task and c.label() != "baseline")
        packed = [c for c in mine if c.task == "packed"]
        assert [(c.batch, c.configurations, c.label()) for c in packed] == [
            (4, 15, "15 packed"),
            (32, 15, "15 packed"),
        ]
    assert len(cases) == 2 * (1 + 3 + 2 + 6)
    assert not any(c.task == "packed" for c in plan_cases(["b16"], [4], 8, pack=0))
    assert not any(c.compiled for c in plan_cases(["b16"], [4], 8, compile_cases=False))


def test_cpu_run_measures_every_case_and_writes_json(tmp_path):
    out = tmp_path / "figures.json"
    args = ["bench", "gpu", "--device", "cpu", "--backbone", "tiny_clip", "--batch", "2"]
    args += ["--feature-batch", "4", "--seconds", "0.05", "--no-compile", "--pack", "3", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    figures = json.loads(out.read_text())["figures"]
    assert [(f["task"], f["batch"]) for f in figures] == [("features", 4), ("lora", 2), ("packed", 2)] + [
        ("features", 4),
        ("features", 4),
        ("lora", 2),
        ("lora", 2),
    ]
    assert all(f["images_per_s"] > 0 and f["steps"] >= 3 for f in figures)
    assert figures[2]["configurations"] == 3
    lines = result.output.splitlines()
    assert len(lines) == 2 + len(figures) + 1
    assert lines[-1].startswith("tiny_clip batch 2: 3 configurations packed ")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_without_a_gpu_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["cytotune", "bench", "gpu"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "cytotune: error: bench gpu: no CUDA device here (torch.cuda.is_available() is False); "
        "expected a machine with a GPU"
    )
