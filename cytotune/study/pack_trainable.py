"""The Ray Tune function of a pack: every trial of a packed cell through a packed trainer, reported to Tune.

LoRA packs train with `run_lora_pack` (early stopping inside the pack at the cell's ASHA rungs, seed-grouped),
linear-probe packs with `run_probe_sweep`. Each report carries under PACK_RESULTS the metrics of the pack's
trials evaluated at that step, keyed by their index in the pack's config ("0", "1", ...); its top-level step,
val_acc and best_val_acc are the pack's best, for Tune and the progress line. LoRA reports carry a checkpoint
of the whole pack, which a retried pack continues exactly. The last report has "done_trial": 1 and, under
PACK_FINAL, each trial's end: status (finished, stopped inside the pack, failed), error, final metrics; its
checkpoint holds each finished trial's files in a folder named by its index (trial_manifest.csv, adapter/ or
head/, result.json), as a separate trial's checkpoint holds them.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from ray import tune

from cytotune.config import TrialConfig
from cytotune.metric_names import BEST_VAL_ACC, DONE_TRIAL, LAST_STEP, STEP, VAL_ACC
from cytotune.study.checkpoint_clock import CheckpointClock
from cytotune.study.packs import pack_rungs
from cytotune.study.spec import AshaSettings
from cytotune.study.trainable import report_state, resume_state, trial_config, trial_context, write_result
from cytotune.tracking.schema import PACK_FINAL, PACK_KEY, PACK_RESULTS
from cytotune.train.packed_lora import PackedOutcome


def pack_trainable(config: dict[str, Any], checkpoint_every_s: float = 0.0) -> None:
    """Run the pack described by a pack's Ray config (see packs.PackPlan.ray_config) and report it to Tune,
    saving its state at most every `checkpoint_every_s` seconds."""
    started_at = time.time()
    members = config[PACK_KEY]
    cfgs = [trial_config(member) for member in members]
    resume = resume_state()
    context = trial_context(cfgs[0], resume is not None, started_at)
    last_step = _last_step(cfgs[0], context["dataset_train"])
    clock = CheckpointClock(checkpoint_every_s)

    def report(metrics: dict[int, dict], state: dict | None) -> None:
        evaluated = {str(i): {**m, LAST_STEP: last_step} for i, m in metrics.items()}
        best = max(m[BEST_VAL_ACC] for m in metrics.values())
        top = {
            STEP: max(m[STEP] for m in metrics.values()),
            VAL_ACC: max(m[VAL_ACC] for m in metrics.values()),
            BEST_VAL_ACC: best,
            LAST_STEP: last_step,
            PACK_RESULTS: evaluated,
        }
        timed = {**top, **context, "elapsed_s": time.time() - started_at}
        report_state(timed, state if state is not None and clock.due() else None)

    with tempfile.TemporaryDirectory(prefix="cytotune-pack-") as folder:
        dirs = [Path(folder) / str(index) for index in range(len(cfgs))]
        for path in dirs:
            path.mkdir()
        if cfgs[0].method == "lora":
            ends = _lora_pack(cfgs, config.get("asha"), last_step, resume, dirs, report)
        else:
            ends = _probe_pack(cfgs, dirs, report)
        final = {}
        for index, (member, end) in enumerate(zip(members, ends, strict=True)):
            if end.result is not None:
                write_result(dirs[index], end.result, member["trial_key"])
            final[str(index)] = _final_metrics(end)
        bests = [end.best_val_acc for end in ends if end.status == "finished"] or [float("nan")]
        tune.report(
            {
                VAL_ACC: max(bests),
                BEST_VAL_ACC: max(bests),
                STEP: max(end.steps for end in ends),
                LAST_STEP: last_step,
                DONE_TRIAL: 1,
                PACK_FINAL: final,
                **context,
                "ended_at": time.time(),
                "elapsed_s": time.time() - started_at,
            },
            checkpoint=tune.Checkpoint.from_directory(folder),
        )


def _last_step(cfg: TrialConfig, num_train: int) -> int:
    """The last step of the pack's trials (all share it)."""
    if cfg.method == "lora":
        from cytotune.train.lora_finetune import lora_steps

        return lora_steps(cfg, num_train)
    from cytotune.train.linear_probe import probe_steps

    return probe_steps(cfg, num_train)


def _lora_pack(cfgs, asha: dict | None, last_step: int, resume, dirs, report) -> list[PackedOutcome]:
    from cytotune.train.packed_lora import run_lora_pack

    settings = None if asha is None else AshaSettings.model_validate(asha)
    rungs = [] if settings is None else pack_rungs(settings, cfgs[0].train.eval_every, last_step)
    eta = 2.0 if settings is None else settings.reduction_factor
    return run_lora_pack(cfgs, report, resume, dirs, rungs, eta)


def _probe_pack(cfgs, dirs, report) -> list[PackedOutcome]:
    """The probe sweep, its per-head evaluations gathered into one report per epoch."""
    from cytotune.train.linear_probe import run_probe_sweep

    pending: dict[int, dict] = {}

    def gather(index: int, metrics: dict) -> None:
        pending[index] = {k: v for k, v in metrics.items() if k != "last_step"}
        if len(pending) == len(cfgs):
            report(dict(pending), None)
            pending.clear()

    results = run_probe_sweep(cfgs, gather, dirs)
    return [PackedOutcome("finished", r.steps, r.best_val_acc, r.best_step, result=r) for r in results]


def _final_metrics(end: PackedOutcome) -> dict[str, Any]:
    """A trial's end as the pack's last report carries it: status, error, steps and best validation, and
    when it finished every final metric (val_acc is its best, as a separate trial reports it)."""
    out: dict[str, Any] = {
        "status": end.status,
        "error": end.error,
        STEP: end.steps,
        BEST_VAL_ACC: end.best_val_acc,
        "best_step": end.best_step,
    }
    if end.result is not None:
        out.update({**end.result.metrics(), VAL_ACC: end.result.best_val_acc, STEP: end.result.steps})
    return out
