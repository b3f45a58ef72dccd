"""The demo: a synthetic dataset, search_spaces/demo.yaml on a local Ray, and the result per cell."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cytotune
from cytotune.study.grid import CellPlan
from cytotune.study.runner import StudyOutcome, experiment_path, run_study
from cytotune.study.spec import DatasetEntry, StudySpec, load_study

DEMO_SPACE = Path(cytotune.__file__).resolve().parent.parent / "search_spaces" / "demo.yaml"
DEMO_IMAGES_PER_CLASS = 100


def demo_spec(out_dir: Path, space: Path = DEMO_SPACE) -> StudySpec:
    """Demo study with the synthetic dataset and Ray storage under out_dir (data generated if missing)."""
    from cytotune.data.synthetic import generate_synthetic

    data = out_dir / "synthetic"
    if not data.exists():
        generate_synthetic(data, per_class=DEMO_IMAGES_PER_CLASS)
    spec = load_study(space)
    demo = spec.model_copy(
        update={
            "datasets": (DatasetEntry(root=data.resolve(), name="synthetic"),),
            "storage": out_dir / "ray_results",
        }
    )
    demo._source, demo._text = spec.source, spec.text
    return demo


def run_demo(
    out_dir: Path = Path("demo_out"),
    *,
    space: Path = DEMO_SPACE,
    spec: StudySpec | None = None,
    cells: list[CellPlan] | None = None,
    callbacks: Sequence[Any] = (),
    reuse_actors: bool = True,
    say: Callable[[str], None] = print,
) -> StudyOutcome:
    """Run the demo study afresh (an earlier demo run under out_dir is replaced) and return its outcome.
    `spec` and `cells`: the demo study (demo_spec) and its plan when the caller made them already."""
    spec = demo_spec(out_dir, space) if spec is None else spec
    shutil.rmtree(experiment_path(spec, None), ignore_errors=True)
    return run_study(spec, cells=cells, callbacks=callbacks, reuse_actors=reuse_actors, say=say)
