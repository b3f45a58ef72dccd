"""The demo: a synthetic dataset, search_spaces/demo.yaml on a local Ray, and the result per cell."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cytotune
from cytotune.config import DatasetEntry, StudySpec, load_study
from cytotune.study.runner import StudyOutcome, experiment_path, run_study

DEMO_SPACE = Path(cytotune.__file__).resolve().parent.parent / "search_spaces" / "demo.yaml"


def demo_spec(out_dir: Path, space: Path = DEMO_SPACE) -> StudySpec:
    """Demo study with the synthetic dataset and Ray storage under out_dir (data generated if missing)."""
    from cytotune.data.synthetic import generate_synthetic

    data = out_dir / "synthetic"
    if not data.exists():
        generate_synthetic(data)
    spec = load_study(space)
    demo = spec.model_copy(
        update={
            "datasets": (DatasetEntry(root=data.resolve(), name="synthetic"),),
            "storage": out_dir / "ray_results",
        }
    )
    demo._source = spec.source
    return demo


def run_demo(
    out_dir: Path = Path("demo_out"),
    *,
    space: Path = DEMO_SPACE,
    callbacks: Sequence[Any] = (),
    reuse_actors: bool = True,
    say: Callable[[str], None] = print,
) -> StudyOutcome:
    """Run the demo study afresh (an earlier demo run under out_dir is replaced) and return its outcome."""
    spec = demo_spec(out_dir, space)
    shutil.rmtree(experiment_path(spec, None), ignore_errors=True)
    return run_study(spec, callbacks=callbacks, reuse_actors=reuse_actors, say=say)


def selection_table(outcome: StudyOutcome) -> str:
    """The validation-selected result per cell as text: chosen values, val accuracy, test accuracy +- std."""
    table = outcome.best_per_cell()
    searched = sorted({name for t in outcome.trials for name in t.searched})
    width = max((len(k) for k in table["cell_key"]), default=4)
    lines = [f"{'cell':<{width}}  {'chosen':<16}  val_acc  test_acc (mean +- std over seeds)"]
    for row in table.to_dict("records"):
        chosen = ", ".join(
            f"{name}={row[name]:g}" if isinstance(row[name], float) else f"{name}={row[name]}"
            for name in searched
        )
        if row["n_seeds"] == 0 or row["val_acc_mean"] != row["val_acc_mean"]:
            lines.append(f"{row['cell_key']:<{width}}  {'-':<16}  no finished trial")
            continue
        lines.append(
            f"{row['cell_key']:<{width}}  {chosen:<16}  {row['val_acc_mean']:.4f}   "
            f"{row['test_acc_mean']:.4f} +- {row['test_acc_std']:.4f}  ({row['n_seeds']} seeds)"
        )
    return "\n".join(lines)
