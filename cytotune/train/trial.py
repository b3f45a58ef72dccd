"""run_trial: one trial of any method, from a plain TrialConfig (no Ray, no MLflow)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cytotune.config import TrialConfig
from cytotune.train.baselines import run_baseline
from cytotune.train.linear_probe import run_linear_probe
from cytotune.train.lora_finetune import run_lora
from cytotune.train.result import TrialResult


def run_trial(
    cfg: TrialConfig,
    report: Callable[[dict, dict | None], None] | None = None,
    resume: dict | None = None,
    out_dir: Path | None = None,
) -> TrialResult:
    """Run one trial to the end and return its final metrics.

    `report(metrics, state)` is called at each evaluation with step, train_loss, val_acc and best_val_acc
    (once, without train_loss, for knn, simpleshot and zero_shot); `state` is None for the methods on cached
    features (they are cheap to rerun) and, for LoRA, a checkpoint that `run_trial(cfg, resume=state)`
    continues exactly. Artifacts go to out_dir when given.
    """
    if cfg.method == "linear_probe":
        return run_linear_probe(cfg, report=report, out_dir=out_dir)
    if cfg.method in ("knn", "simpleshot", "zero_shot"):
        return run_baseline(cfg, report=report, out_dir=out_dir)
    return run_lora(cfg, report=report, resume=resume, out_dir=out_dir)
