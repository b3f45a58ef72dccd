"""Packed LoRA: the configurations (learning rates x seeds) of one cell trained together through one frozen
backbone pass per step.

Each configuration keeps what it would have alone: its few-shot sample and batch order, its augmentation and
LoRA-dropout streams, its LoRA weights and head (grouped, see models/grouped_lora.py), its AdamW state and its
learning-rate schedule; each starts from the very weights and generator states its separate trial
(lora_finetune.py) starts from, so on the CPU its losses and validation curve are that trial's, to float
rounding (the backbones carry no dropout of their own; LoRA dropout is per configuration). On CUDA each
configuration's dropout generator is seeded with its seed: the same training in law, not the same masks.
Early stopping inside the pack drops whole configurations, all seeds together, at given rungs.

Packing pays where one configuration leaves the device idle: few-shot batches (4 to 32 images) and many
configurations per cell. It does not where a single configuration already fills the device, and it needs
memory for K x batch images in one pass: split big sweeps into several packs.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from cytotune.config import TrialConfig
from cytotune.data import open_eval_cache, open_image_cache
from cytotune.data.transforms import eval_transform, train_transform
from cytotune.errors import CytotuneError
from cytotune.metric_names import BEST_VAL_ACC, STEP, TRAIN_LOSS, VAL_ACC
from cytotune.models import get_backbone_spec, load_backbone
from cytotune.models.grouped_lora import (
    adapter_state_dict,
    add_grouped_lora,
    grouped_layers,
    load_adapter_state_dict,
)
from cytotune.models.lora import add_lora, load_lora_state_dict, lora_state_dict, save_adapter
from cytotune.train.batches import BatchStream
from cytotune.train.best import BestTracker
from cytotune.train.guard import ensure_finite_loss
from cytotune.train.head import AdamW
from cytotune.train.lora_finetune import _cpu_copy, lora_steps
from cytotune.train.result import TrialResult
from cytotune.train.runtime import PeakMemory, autocast, resolve_device, seed_everything
from cytotune.train.schedule import warmup_cosine_table
from cytotune.train.scoring import scored_result
from cytotune.train.trial_data import trial_manifest, trial_rows, write_trial_manifest

PackReport = Callable[[dict[int, dict], dict], None]


@dataclass
class PackedOutcome:
    """What became of one configuration of a pack: finished (with its result), stopped at a rung, or failed
    (a non-finite loss; `error` says where)."""

    status: Literal["finished", "stopped", "failed"]
    steps: int
    best_val_acc: float
    best_step: int
    result: TrialResult | None = None
    error: str | None = None


def check_one_cell(cfgs: Sequence[TrialConfig]) -> None:
    """CytotuneError unless `cfgs` are LoRA trials of one cell differing in lr and seed only."""
    if not cfgs:
        raise CytotuneError("a LoRA pack needs at least one trial")
    cell = {cfg.model_copy(update={"lr": 1.0, "seed": 0}) for cfg in cfgs}
    if len(cell) != 1 or cfgs[0].method != "lora":
        raise CytotuneError(
            "a LoRA pack takes LoRA trials of one cell: expected them to differ in lr and seed only"
        )
    if cfgs[0].head_init != "random":
        raise CytotuneError(
            "a LoRA pack starts its heads at random: head_init: text is for separate LoRA trials; "
            "expected head_init: random"
        )


def rung_survivors(means: dict, eta: float) -> set:
    """Configurations (keys of `means`, their seed-mean validation accuracy at a rung) that go on: those at or
    above the (1 - 1/eta) quantile of the means (linear interpolation), as ASHA decides at a full rung."""
    cutoff = float(np.percentile(list(means.values()), (1.0 - 1.0 / eta) * 100.0))
    return {key for key, value in means.items() if value >= cutoff}


def initial_state(cfg: TrialConfig, pristine: nn.Module, num_classes: int) -> tuple[dict, torch.Tensor]:
    """The LoRA + head weights a separate LoRA trial of `cfg` starts from (trainable_state() keys), and the
    global torch RNG state it then trains with, both made as LoraRun makes them (on a copy of `pristine`, the
    unadapted backbone, that shares its weights: adding LoRA replaces modules, never weights)."""
    seed_everything(cfg.seed)
    shared = {id(tensor): tensor for tensor in chain(pristine.parameters(), pristine.buffers())}
    adapted = add_lora(copy.deepcopy(pristine, shared), cfg.lora)
    head = nn.Linear(get_backbone_spec(cfg.backbone_ref).feature_dim, num_classes)
    state = {f"lora.{k}": v for k, v in lora_state_dict(adapted).items()}
    state.update({f"head.{k}": v.detach().clone() for k, v in head.state_dict().items()})
    return state, torch.get_rng_state()


class PackedLoraRun:
    """K LoRA trials of one cell in progress on one grouped backbone; checkpointable with state_dict().

    Positions 0..K-1 (`active`) index the configurations still training; `active[i]` is the index of the
    i-th into the `cfgs` the run was built with.
    """

    def __init__(self, cfgs: Sequence[TrialConfig], device: torch.device) -> None:
        check_one_cell(cfgs)
        self.cfgs = list(cfgs)
        self.device = device
        cfg = cfgs[0]
        manifest = trial_manifest(cfg)
        self.datas = [trial_rows(c, manifest) for c in cfgs]
        if len({(len(d.train), len(d.val)) for d in self.datas}) != 1:
            raise CytotuneError("LoRA trials packed together must use train and val subsets of one size")
        self.spec = get_backbone_spec(cfg.backbone_ref)
        self.view = (self.spec.input_size, self.spec.mean, self.spec.std)
        num_classes = len(manifest.classes)
        pristine = load_backbone(cfg.backbone_ref, weights=cfg.weights)
        starts, self.dropout_generators = [], []
        for c in cfgs:
            state, rng = initial_state(c, pristine, num_classes)
            starts.append(state)
            generator = torch.Generator(device=device)
            if device.type == "cpu":
                generator.set_state(rng)
            else:
                generator.manual_seed(c.seed)
            self.dropout_generators.append(generator)
        adapters = [{k[5:]: v for k, v in s.items() if k.startswith("lora.")} for s in starts]
        self.backbone = add_grouped_lora(pristine, cfg.lora, adapters, self.dropout_generators).to(device)
        self.head_weight = nn.Parameter(torch.stack([s["head.weight"] for s in starts]).to(device))
        self.head_bias = nn.Parameter(torch.stack([s["head.bias"] for s in starts]).to(device))
        self.optimisers = [AdamW(p.detach(), cfg.train.weight_decay) for p in self.parameters()]
        self.generators = [torch.Generator().manual_seed(c.seed) for c in cfgs]
        self.augment_generators = [torch.Generator(device=device).manual_seed(c.seed) for c in cfgs]
        self.streams = [
            BatchStream(len(d.train), cfg.train.batch_size, g)
            for d, g in zip(self.datas, self.generators, strict=True)
        ]
        self.images = open_image_cache(manifest, size=cfg.train.image_cache_size, cache_dir=cfg.cache_dir)
        self.eval_images = open_eval_cache(manifest, self.spec.input_size, cfg.cache_dir)
        self.labels = self.datas[0].label_tensor()
        self.total_steps = lora_steps(cfg, len(self.datas[0].train))
        self.lr_table = warmup_cosine_table(
            torch.tensor([c.lr for c in cfgs], dtype=torch.float64),
            total_steps=self.total_steps,
            warmup_steps=cfg.train.warmup_steps,
            min_lr=cfg.train.min_lr,
        ).to(device=device, dtype=torch.float32)
        self.active = list(range(len(cfgs)))
        self.best = [BestTracker() for _ in cfgs]
        self.outcomes: dict[int, PackedOutcome] = {}
        self.step = 0
        self.examples_seen = 0
        self.train_seconds = 0.0
        self.where = [f"LoRA {c.backbone}/{c.dataset} lr={c.lr} seed={c.seed}" for c in cfgs]

    def parameters(self) -> list[nn.Parameter]:
        """The stacked trainable tensors, first dimension the active configurations: LoRA A and B of every
        grouped layer, then the heads' weight and bias."""
        params = []
        for layer in grouped_layers(self.backbone).values():
            params += [layer.lora_A, layer.lora_B]
        return [*params, self.head_weight, self.head_bias]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (K, B, classes) of each active configuration on its block of K x B normalised images."""
        with autocast(self.device):
            features = self.backbone(x).view(len(self.active), -1, self.head_weight.shape[-1])
            logits = torch.baddbmm(self.head_bias.unsqueeze(1), features, self.head_weight.transpose(1, 2))
            return logits.float()

    def trainable_state(self, position: int) -> dict[str, torch.Tensor]:
        """LoRA and head weights of the configuration at `position`, keyed as LoraRun.trainable_state()."""
        state = {f"lora.{k}": v for k, v in adapter_state_dict(self.backbone, position).items()}
        state["head.weight"] = self.head_weight[position].detach().clone()
        state["head.bias"] = self.head_bias[position].detach().clone()
        return state

    def load_trainable_state(self, position: int, state: dict[str, torch.Tensor]) -> None:
        """Put trainable_state() output into the configuration at `position`."""
        lora = {k.removeprefix("lora."): v for k, v in state.items() if k.startswith("lora.")}
        load_adapter_state_dict(self.backbone, position, lora)
        with torch.no_grad():
            self.head_weight[position].copy_(state["head.weight"])
            self.head_bias[position].copy_(state["head.bias"])

    def drop(
        self,
        positions: Sequence[int],
        status: Literal["stopped", "failed"],
        errors: Sequence[str] | None = None,
    ) -> None:
        """End the configurations at `positions` with `status`; the others go on, in the same order."""
        for i, position in enumerate(positions):
            index = self.active[position]
            tracker = self.best[index]
            self.outcomes[index] = PackedOutcome(
                status,
                self.step,
                tracker.value,
                tracker.step,
                error=None if errors is None else errors[i],
            )
        keep = [p for p in range(len(self.active)) if p not in set(positions)]
        self._select(keep)

    def _select(self, keep: list[int]) -> None:
        """Keep the configurations at positions `keep` (in that order) in every stacked tensor and list."""
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        for layer in grouped_layers(self.backbone).values():
            layer.select(index)
        self.head_weight = nn.Parameter(self.head_weight.detach()[index])
        self.head_bias = nn.Parameter(self.head_bias.detach()[index])
        old = self.optimisers
        self.optimisers = [AdamW(p.detach(), old[0].weight_decay) for p in self.parameters()]
        for new, before in zip(self.optimisers, old, strict=True):
            new.exp_avg, new.exp_avg_sq, new.t = before.exp_avg[index], before.exp_avg_sq[index], before.t
        self.dropout_generators[:] = [self.dropout_generators[p] for p in keep]
        self.active = [self.active[p] for p in keep]

    def train_step(self) -> list[float]:
        """One optimisation step of every active configuration on its next batch; their losses."""
        views, targets, rows_seen = [], [], 0
        for index in self.active:
            rows = self.datas[index].train[self.streams[index].next().numpy()]
            if self.cfgs[index].train.augment:
                images = self.images.batch(rows)
                generator = self.augment_generators[index]
                views.append(train_transform(images, *self.view, generator, device=self.device))
            else:
                views.append(eval_transform(self.eval_images.batch(rows).to(self.device), *self.view))
            targets.append(self.labels[rows])
            rows_seen += len(rows)
        logits = self.forward(torch.cat(views))
        y = torch.cat(targets).to(self.device)
        losses = nn.functional.cross_entropy(logits.flatten(0, 1), y, reduction="none").view(logits.shape[:2])
        losses = losses.mean(1)
        values = losses.tolist()
        failed, errors = [], []
        for position, (index, value) in enumerate(zip(self.active, values, strict=True)):
            try:
                ensure_finite_loss(value, self.step + 1, self.where[index])
            except CytotuneError as err:
                failed.append(position)
                errors.append(str(err))
        finite = [p for p in range(len(values)) if p not in failed]
        lr = self.lr_table[self.step, self.active]
        if finite:
            losses[finite].sum().backward()
            with torch.no_grad():
                for parameter, optimiser in zip(self.parameters(), self.optimisers, strict=True):
                    optimiser.step(parameter.grad, lr.view(-1, *[1] * (parameter.dim() - 1)))
        for parameter in self.parameters():
            parameter.grad = None
        self.step += 1
        self.examples_seen += rows_seen
        if failed:
            self.drop(failed, "failed", errors)
        return values

    def predict(self, rows: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Predicted classes of each active configuration on its rows (one array per configuration)."""
        return [logits.argmax(-1).numpy() for logits in self.logits(rows)]

    @torch.inference_mode()
    def logits(self, rows: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Class logits (N, C) on the CPU of each active configuration on its rows (all of one length;
        evaluation preprocessing, dropout off)."""
        self.backbone.eval()
        groups = len(self.active)
        chunk = max(1, self.cfgs[0].train.eval_batch_size // groups)
        shared = all(np.array_equal(r, rows[0]) for r in rows)
        out = []
        for lo in range(0, len(rows[0]), chunk):
            if shared:
                x = self._eval_view(rows[0][lo : lo + chunk])
                x = x.repeat(groups, *[1] * (x.dim() - 1))
            else:
                x = torch.cat([self._eval_view(r[lo : lo + chunk]) for r in rows])
            out.append(self.forward(x).float().cpu())
        self.backbone.train()
        return list(torch.cat(out, 1))

    def _eval_view(self, rows: np.ndarray) -> torch.Tensor:
        return eval_transform(self.eval_images.batch(rows).to(self.device), *self.view)

    def val_accuracy(self) -> list[float]:
        """Validation accuracy of each active configuration."""
        datas = [self.datas[i] for i in self.active]
        predictions = self.predict([d.val for d in datas])
        return [float((p == d.labels(d.val)).mean()) for p, d in zip(predictions, datas, strict=True)]

    def _stop_at_rung(self, val_accs: list[float], eta: float) -> None:
        """Drop the configurations (all their seeds) whose seed-mean val accuracy is below the rung's cut."""
        keys = [self.cfgs[i].model_copy(update={"seed": 0}) for i in self.active]
        scores: dict[TrialConfig, list[float]] = {}
        for key, val_acc in zip(keys, val_accs, strict=True):
            scores.setdefault(key, []).append(val_acc)
        means = {key: float(np.mean(values)) for key, values in scores.items()}
        survivors = rung_survivors(means, eta)
        self.drop([p for p, key in enumerate(keys) if key not in survivors], "stopped")

    def train(self, report: PackReport | None = None, rungs: Sequence[int] = (), eta: float = 2.0) -> None:
        """Train to the last step, evaluating on val every eval_every steps and at the end; at each rung below
        the last step, configurations are stopped by seed-mean val accuracy (rung_survivors with `eta`).

        `report({index: metrics}, state)` follows each evaluation, with the metrics of every configuration
        evaluated (by index into cfgs) and a checkpoint that load_state_dict() continues exactly.
        """
        every = self.cfgs[0].train.eval_every
        off = [r for r in rungs if r % every and r != self.total_steps]
        if off:
            raise CytotuneError(
                f"pack rungs {off} are not evaluation steps (every {every} steps and the last)"
            )
        self.backbone.train()
        losses: dict[int, list[float]] = {i: [] for i in self.active}
        while self.step < self.total_steps and self.active:
            start = time.perf_counter()
            trained = list(self.active)
            values = self.train_step()
            self.train_seconds += time.perf_counter() - start
            for index, value in zip(trained, values, strict=True):
                losses[index].append(value)
            if self.active and (self.step % every == 0 or self.step == self.total_steps):
                val_accs = self.val_accuracy()
                metrics = {}
                for position, (index, val_acc) in enumerate(zip(self.active, val_accs, strict=True)):
                    self.best[index].update(self.step, val_acc, lambda p=position: self.trainable_state(p))
                    metrics[index] = {
                        STEP: self.step,
                        TRAIN_LOSS: float(np.mean(losses[index])),
                        VAL_ACC: val_acc,
                        BEST_VAL_ACC: self.best[index].value,
                    }
                    losses[index] = []
                if self.step in rungs and self.step < self.total_steps:
                    self._stop_at_rung(val_accs, eta)
                if report is not None:
                    report(metrics, self.state_dict())

    def state_dict(self) -> dict:
        """Everything needed to continue exactly from this step (a CPU copy)."""
        per_config = {
            index: {
                "generator": self.generators[index].get_state(),
                "augment": self.augment_generators[index].get_state(),
                "dropout": self.dropout_generators[position].get_state(),
                "stream": self.streams[index].state_dict(),
                "best": self.best[index].state_dict(),
            }
            for position, index in enumerate(self.active)
        }
        return _cpu_copy(
            {
                "step": self.step,
                "active": list(self.active),
                "parameters": [p.detach() for p in self.parameters()],
                "optimisers": [
                    {"exp_avg": o.exp_avg, "exp_avg_sq": o.exp_avg_sq, "t": o.t} for o in self.optimisers
                ],
                "configs": per_config,
                "outcomes": {i: vars(o) for i, o in self.outcomes.items()},
                "examples_seen": self.examples_seen,
                "train_seconds": self.train_seconds,
            }
        )

    def load_state_dict(self, state: dict) -> None:
        """Continue from a state_dict() taken by a pack of the same configurations."""
        self._select([self.active.index(i) for i in state["active"]])
        self.step = int(state["step"])
        with torch.no_grad():
            for parameter, saved in zip(self.parameters(), state["parameters"], strict=True):
                parameter.copy_(saved)
        for optimiser, saved in zip(self.optimisers, state["optimisers"], strict=True):
            optimiser.exp_avg.copy_(saved["exp_avg"])
            optimiser.exp_avg_sq.copy_(saved["exp_avg_sq"])
            optimiser.t = int(saved["t"])
        for position, index in enumerate(self.active):
            saved = state["configs"][index]
            self.generators[index].set_state(saved["generator"])
            self.augment_generators[index].set_state(saved["augment"])
            self.dropout_generators[position].set_state(saved["dropout"])
            self.streams[index].load_state_dict(saved["stream"])
            best = dict(saved["best"])
            if best["state"] is not None:
                best["state"] = {k: v.to(self.device) for k, v in best["state"].items()}
            self.best[index].load_state_dict(best)
        self.outcomes = {int(i): PackedOutcome(**o) for i, o in state["outcomes"].items()}
        self.examples_seen = int(state["examples_seen"])
        self.train_seconds = float(state["train_seconds"])


def _export_adapters(run: PackedLoraRun, out_dirs: Sequence[Path | None]) -> dict[int, dict[str, Path]]:
    """Trial manifests and adapters (best weights) of the finished configurations, into their out_dirs."""
    cfg = run.cfgs[0]
    written: dict[int, dict[str, Path]] = {i: {} for i in run.active}
    wanted = [i for i in run.active if out_dirs[i] is not None]
    if not wanted:
        return written
    adapted = add_lora(load_backbone(cfg.backbone_ref, weights=cfg.weights), cfg.lora)
    head = nn.Linear(run.spec.feature_dim, len(run.datas[0].manifest.classes))
    classes = run.datas[0].manifest.classes
    for index in wanted:
        out_dir = Path(out_dirs[index])
        best = run.best[index].state
        load_lora_state_dict(adapted, {k[5:]: v.cpu() for k, v in best.items() if k.startswith("lora.")})
        head.load_state_dict({"weight": best["head.weight"].cpu(), "bias": best["head.bias"].cpu()})
        written[index]["trial_manifest.csv"] = write_trial_manifest(
            run.datas[index], out_dir / "trial_manifest.csv"
        )
        written[index]["adapter"] = save_adapter(
            out_dir / "adapter", adapted, head, cfg.lora, classes, cfg.backbone
        )
    return written


def run_lora_pack(
    cfgs: Sequence[TrialConfig],
    report: PackReport | None = None,
    resume: dict | None = None,
    out_dirs: Sequence[Path | None] | None = None,
    rungs: Sequence[int] = (),
    eta: float = 2.0,
) -> list[PackedOutcome]:
    """Fine-tune the LoRA trials of one cell (differing in lr and seed only) as one pack; one outcome per
    trial, in order. Each finished trial's result is what it gives alone (run_lora) to float rounding on the
    CPU; wall_s is its equal share of the pack's time and images_per_s the pack's training throughput.

    `report({index: metrics}, state)` at each evaluation, `state` continuing the pack exactly when passed back
    as `resume`. At each step of `rungs` below the last, configurations whose seed-mean val accuracy is below
    the rung's cut (keep the top 1/eta) stop, every seed together.
    """
    start = time.perf_counter()
    check_one_cell(cfgs)
    device = resolve_device(cfgs[0].train.device)
    memory = PeakMemory(device)
    run = PackedLoraRun(cfgs, device)
    if resume is not None:
        run.load_state_dict(resume)
    run.train(report, rungs, eta)
    finished = list(run.active)
    for position, index in enumerate(finished):
        run.load_trainable_state(position, run.best[index].state)
    tests = {}
    if finished:
        tests = dict(zip(finished, run.logits([run.datas[i].test for i in finished]), strict=True))
    artifacts = _export_adapters(run, out_dirs or [None] * len(cfgs))
    trainable = sum(p[0].numel() for p in run.parameters()) if finished else 0
    frozen = sum(p.numel() for p in run.backbone.parameters() if not p.requires_grad)
    wall = (time.perf_counter() - start) / len(cfgs)
    for index in finished:
        data, tracker = run.datas[index], run.best[index]
        probabilities = torch.softmax(tests[index].double(), 1).numpy()
        result = scored_result(
            run.cfgs[index],
            data,
            probabilities,
            best_val_acc=tracker.value,
            best_step=tracker.step,
            trainable_params=trainable,
            total_params=frozen + trainable,
            examples_seen=run.examples_seen,
            train_seconds=run.train_seconds,
            peak_mem_mb=memory.megabytes(),
            wall_s=wall,
            steps=run.step,
            artifacts=artifacts[index],
        )
        run.outcomes[index] = PackedOutcome("finished", run.step, tracker.value, tracker.step, result=result)
    return [run.outcomes[i] for i in range(len(cfgs))]
