"""One LoRA fine-tuning trial: LoRA on the backbone's attention, a Linear head, AdamW, warmup + cosine."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cytotune.config import TrialConfig
from cytotune.data import open_eval_cache, open_image_cache
from cytotune.data.transforms import eval_transform, train_transform
from cytotune.metric_names import BEST_VAL_ACC, LAST_STEP, STEP, TRAIN_LOSS, VAL_ACC
from cytotune.models import get_backbone_spec, load_backbone
from cytotune.models.lora import add_lora, load_lora_state_dict, lora_state_dict, save_adapter
from cytotune.models.params import count_parameters
from cytotune.train.batches import BatchStream
from cytotune.train.best import BestTracker
from cytotune.train.guard import ensure_finite_loss
from cytotune.train.result import TrialResult
from cytotune.train.runtime import PeakMemory, autocast, resolve_device, seed_everything
from cytotune.train.schedule import warmup_cosine_lr
from cytotune.train.scoring import scored_result
from cytotune.train.text_classifier import text_classifier, text_head
from cytotune.train.trial_data import TrialData, trial_data, write_trial_manifest

Report = Callable[[dict, dict | None], None]


def lora_steps(cfg: TrialConfig, num_train: int) -> int:
    """Optimisation steps of a LoRA trial: base + per-shot steps for few-shot, else epochs over the subset;
    capped by train.max_steps."""
    settings = cfg.train
    if cfg.shots is not None:
        steps = settings.base_steps + settings.steps_per_shot * cfg.shots
    else:
        steps = settings.epochs * math.ceil(num_train / settings.batch_size)
    return min(steps, settings.max_steps) if settings.max_steps is not None else steps


def _cpu_copy(value):
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _cpu_copy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu_copy(item) for item in value)
    return value


class LoraRun:
    """A LoRA trial in progress: the adapted backbone and head, optimiser, batch stream, generators and the
    best-validation tracker; checkpointable at any step with state_dict()."""

    def __init__(self, cfg: TrialConfig, data: TrialData, device: torch.device) -> None:
        self.cfg = cfg
        self.data = data
        self.device = device
        self.generator = seed_everything(cfg.seed)
        self.spec = get_backbone_spec(cfg.backbone_ref)
        self.view = (self.spec.input_size, self.spec.mean, self.spec.std)
        self.backbone = add_lora(load_backbone(cfg.backbone_ref, weights=cfg.weights), cfg.lora).to(device)
        self.head = nn.Linear(self.spec.feature_dim, len(data.manifest.classes)).to(device)
        trainable = [p for p in chain(self.backbone.parameters(), self.head.parameters()) if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.train.weight_decay)
        self.augment_generator = torch.Generator(device=device).manual_seed(cfg.seed)
        self.images = open_image_cache(
            data.manifest, size=cfg.train.image_cache_size, cache_dir=cfg.cache_dir
        )
        self.eval_images = open_eval_cache(data.manifest, self.spec.input_size, cfg.cache_dir)
        self.labels = data.label_tensor()
        self.stream = BatchStream(len(data.train), cfg.train.batch_size, self.generator)
        self.total_steps = lora_steps(cfg, len(data.train))
        self.best = BestTracker()
        self.step = 0
        self.examples_seen = 0
        self.train_seconds = 0.0
        self.where = f"LoRA {cfg.backbone}/{cfg.dataset} lr={cfg.lr} seed={cfg.seed}"
        if cfg.head_init == "text":
            self.start_head_from_text()

    def start_head_from_text(self) -> None:
        """head_init: text: the head from the class prompts' text embeddings (text_classifier.py), scaled by
        the mean feature norm of the first eval_batch_size train images (evaluation view)."""
        rows = self.data.train[: self.cfg.train.eval_batch_size]
        classifier = text_classifier(self.cfg, list(self.data.manifest.classes))
        training = self.backbone.training
        self.backbone.eval()
        with torch.inference_mode():
            x = eval_transform(self.eval_images.batch(rows).to(self.device), *self.view)
            with autocast(self.device):
                features = self.backbone(x).float()
        self.backbone.train(training)
        weight, bias = text_head(classifier, features)
        with torch.no_grad():
            self.head.weight.copy_(weight)
            self.head.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the adapted backbone + head on normalised images."""
        with autocast(self.device):
            return self.head(self.backbone(x)).float()

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """LoRA and head weights (what training changes), by name."""
        state = {f"lora.{k}": v for k, v in lora_state_dict(self.backbone).items()}
        state.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        return state

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Put LoRA and head weights from trainable_state() output back into the model."""
        load_lora_state_dict(
            self.backbone, {k[5:]: v.to(self.device) for k, v in state.items() if k.startswith("lora.")}
        )
        self.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})

    def state_dict(self) -> dict:
        """Everything needed to continue exactly from this step (a CPU copy)."""
        rng = {"torch": torch.get_rng_state(), "generator": self.generator.get_state()}
        rng["augment"] = self.augment_generator.get_state()
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return _cpu_copy(
            {
                "step": self.step,
                "trainable": self.trainable_state(),
                "optimizer": self.optimizer.state_dict(),
                "best": self.best.state_dict(),
                "rng": rng,
                "stream": self.stream.state_dict(),
                "examples_seen": self.examples_seen,
                "train_seconds": self.train_seconds,
            }
        )

    def load_state_dict(self, state: dict) -> None:
        """Continue from a state_dict() taken by a run of the same TrialConfig."""
        self.step = int(state["step"])
        self.load_trainable_state(state["trainable"])
        self.optimizer.load_state_dict(state["optimizer"])
        best = dict(state["best"])
        if best["state"] is not None:
            best["state"] = {k: v.to(self.device) for k, v in best["state"].items()}
        self.best.load_state_dict(best)
        torch.set_rng_state(state["rng"]["torch"])
        self.generator.set_state(state["rng"]["generator"])
        self.augment_generator.set_state(state["rng"]["augment"])
        if self.device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.stream.load_state_dict(state["stream"])
        self.examples_seen = int(state["examples_seen"])
        self.train_seconds = float(state["train_seconds"])

    def train_step(self) -> float:
        """One optimisation step on the next batch; returns its loss."""
        rows = self.data.train[self.stream.next().numpy()]
        if self.cfg.train.augment:
            images = self.images.batch(rows)
            x = train_transform(images, *self.view, self.augment_generator, device=self.device)
        else:
            x = eval_transform(self.eval_images.batch(rows).to(self.device), *self.view)
        y = self.labels[rows].to(self.device)
        loss = nn.functional.cross_entropy(self.forward(x), y)
        value = loss.item()
        ensure_finite_loss(value, self.step + 1, self.where)
        lr = warmup_cosine_lr(
            self.step,
            base_lr=self.cfg.lr,
            total_steps=self.total_steps,
            warmup_steps=self.cfg.train.warmup_steps,
            min_lr=self.cfg.train.min_lr,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        self.examples_seen += len(rows)
        return value

    @torch.inference_mode()
    def logits(self, rows: np.ndarray) -> torch.Tensor:
        """Class logits (float32, on the CPU) of the given manifest rows (evaluation preprocessing, dropout
        off)."""
        self.backbone.eval()
        self.head.eval()
        out = []
        for lo in range(0, len(rows), self.cfg.train.eval_batch_size):
            batch = rows[lo : lo + self.cfg.train.eval_batch_size]
            x = eval_transform(self.eval_images.batch(batch).to(self.device), *self.view)
            out.append(self.forward(x).float().cpu())
        self.backbone.train()
        self.head.train()
        return torch.cat(out)

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Predicted classes of the given manifest rows."""
        return self.logits(rows).argmax(1).numpy()

    def accuracy(self, rows: np.ndarray) -> float:
        """Top-1 accuracy on the given manifest rows."""
        return float((self.predict(rows) == self.data.labels(rows)).mean())

    def train(self, report: Report | None = None) -> None:
        """Train to the last step, evaluating on val every eval_every steps and at the end."""
        self.backbone.train()
        self.head.train()
        losses: list[float] = []
        while self.step < self.total_steps:
            start = time.perf_counter()
            losses.append(self.train_step())
            self.train_seconds += time.perf_counter() - start
            if self.step % self.cfg.train.eval_every == 0 or self.step == self.total_steps:
                val_acc = self.accuracy(self.data.val)
                self.best.update(self.step, val_acc, self.trainable_state)
                if report is not None:
                    metrics = {
                        STEP: self.step,
                        LAST_STEP: self.total_steps,
                        TRAIN_LOSS: float(np.mean(losses)),
                        VAL_ACC: val_acc,
                        BEST_VAL_ACC: self.best.value,
                    }
                    report(metrics, self.state_dict())
                losses = []

    def restore_best(self) -> None:
        """Load the best-validation LoRA + head weights into the model."""
        self.load_trainable_state(self.best.state)


def run_lora(
    cfg: TrialConfig, report: Report | None = None, resume: dict | None = None, out_dir: Path | None = None
) -> TrialResult:
    """Fine-tune with LoRA and evaluate one trial; `report(metrics, state)` at each evaluation, where `state`
    continues the trial exactly when passed back as `resume`."""
    start = time.perf_counter()
    device = resolve_device(cfg.train.device)
    memory = PeakMemory(device)
    data = trial_data(cfg)
    run = LoraRun(cfg, data, device)
    if resume is not None:
        run.load_state_dict(resume)
    run.train(report)
    run.restore_best()
    probabilities = torch.softmax(run.logits(data.test).double(), 1).numpy()
    artifacts = {}
    if out_dir is not None:
        out_dir = Path(out_dir)
        artifacts["trial_manifest.csv"] = write_trial_manifest(data, out_dir / "trial_manifest.csv")
        artifacts["adapter"] = save_adapter(
            out_dir / "adapter",
            run.backbone,
            run.head,
            cfg.lora,
            data.manifest.classes,
            cfg.backbone,
            cfg.train.image_cache_size,
        )
    trainable, total = count_parameters(nn.ModuleList([run.backbone, run.head]))
    return scored_result(
        cfg,
        data,
        probabilities,
        best_val_acc=run.best.value,
        best_step=run.best.step,
        trainable_params=trainable,
        total_params=total,
        examples_seen=run.examples_seen,
        train_seconds=run.train_seconds,
        peak_mem_mb=memory.megabytes(),
        wall_s=time.perf_counter() - start,
        steps=run.step,
        artifacts=artifacts,
    )
