"""The text blocks of search_spaces/demo_baselines.yaml end to end on a real Ray with MLflow: zero_shot
and text-initialised probe and LoRA heads run as trials, are tracked, selected by `best` and reported."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_own_data_ray import small_ray  # noqa: F401  (fixture: a one-node Ray with the test's cache)

from cytotune.data.synthetic import generate_synthetic
from cytotune.report import build_report
from cytotune.study.grid import expand_cells
from cytotune.study.launch import study_callback
from cytotune.study.runner import run_study
from cytotune.study.spec import load_study
from cytotune.tracking import best_configs
from cytotune.tracking.rerun import write_rerun

pytestmark = pytest.mark.slow
SPACE = Path(__file__).resolve().parent.parent / "search_spaces" / "demo_baselines.yaml"
TEXT_BLOCKS = ("zero_shot", "linear_probe_text", "lora_text")


@pytest.mark.usefixtures("small_ray")
def test_demo_text_blocks_run_are_selected_and_reported(tmp_path, mlflow_sqlite_uri, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = load_study(SPACE)
    data = generate_synthetic(tmp_path / "synthetic", classes=4, per_class=16, size=40, seed=0)
    entry = shipped.datasets[0].model_copy(update={"root": tmp_path / "synthetic"})
    assert entry.prompts is not None and set(entry.prompts.classes) == {f"class_{c}" for c in range(4)}
    spec = shipped.model_copy(
        update={
            "datasets": (entry,),
            "storage": str(tmp_path / "ray"),
            "methods": tuple(b for b in shipped.methods if b.label in TEXT_BLOCKS),
        }
    )
    spec._source = shipped.source
    assert data is not None and [b.label for b in spec.methods] == list(TEXT_BLOCKS)
    cells = expand_cells(spec)
    tracking = study_callback(spec, cells, mlflow_sqlite_uri)
    outcome = run_study(spec, tracking_uri=mlflow_sqlite_uri, callbacks=[tracking], say=lambda _: None)
    # zero-shot (1 seed), text probe (2 lr x 2 seeds), text LoRA (2 seeds)
    assert outcome.counts()["finished"] == 7 and not outcome.failed()

    best = best_configs("demo_baselines", mlflow_sqlite_uri).set_index("cell_key")
    zero = best.loc["zero_shot/tiny_clip/synthetic/full"]
    assert zero["n_seeds"] == 1 and not zero["missing_seeds"] and 0 <= zero["test_acc_mean"] <= 1
    for key in (
        "linear_probe_text/tiny_clip/synthetic/full",
        "lora_text/tiny_clip/synthetic/shots=4/rank=2,targets=qv",
    ):
        assert best.loc[key, "n_seeds"] == 2
    report = build_report("demo_baselines", mlflow_sqlite_uri, tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "zero_shot/tiny_clip/synthetic/full" in text and "linear_probe_text/tiny_clip" in text
    assert "zero_shot/tiny_clip/synthetic/full" in set(report.best["cell_key"])

    rerun = load_study(write_rerun("demo_baselines", tmp_path / "rerun.yaml", mlflow_sqlite_uri))
    blocks = {block.label: block for block in rerun.methods}
    assert blocks["zero_shot"].seeds == (1,) and blocks["zero_shot"].lr is None
    assert blocks["linear_probe_text"].head_init == blocks["lora_text"].head_init == "text"
    assert blocks["lora_text"].datasets[0].prompts == entry.prompts
