"""A study: YAML -> cells and trials, a Ray Tune run with per-cell ASHA and per-cell Optuna, resume."""

from cytotune.study.demo import run_demo
from cytotune.study.grid import (
    CellPlan,
    TrialPlan,
    cell_key,
    count_trials,
    expand_cells,
    expand_trials,
    trial_key,
)
from cytotune.study.runner import StudyOutcome, StudyPlan, TrialOutcome, describe_plan, dry_run, run_study

__all__ = [
    "CellPlan",
    "StudyOutcome",
    "StudyPlan",
    "TrialOutcome",
    "TrialPlan",
    "cell_key",
    "count_trials",
    "describe_plan",
    "dry_run",
    "expand_cells",
    "expand_trials",
    "run_demo",
    "run_study",
    "trial_key",
]
