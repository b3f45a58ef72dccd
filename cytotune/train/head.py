"""Training linear heads (Linear with bias) on cached features: tensor ops only, a few kernels per step.

Several heads of one cell (different learning rates and seeds, same subset sizes) train together as a batch
of heads, so that a whole probe sweep costs about what one head costs; a single trial is a batch of one.
The optimiser is AdamW written out on the augmented parameters [W | b] with the gradient of the mean
cross-entropy in closed form; it follows torch.optim.AdamW step for step (a test holds them equal).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from cytotune.train.best import BestTracker
from cytotune.train.guard import ensure_finite_loss
from cytotune.train.schedule import warmup_cosine_table

BETA1 = 0.9
BETA2 = 0.999
EPS = 1e-8

EvalCallback = Callable[[int, int, float, float, float], None]


@dataclass(frozen=True)
class HeadSchedule:
    """How a head trains: AdamW hyperparameters, batch size, epochs and the warmup + cosine schedule."""

    lr: float
    weight_decay: float
    batch_size: int
    epochs: int
    warmup_steps: int
    min_lr: float

    def total_steps(self, num_examples: int) -> int:
        """Optimisation steps over `num_examples` examples (the last batch of an epoch may be short)."""
        return self.epochs * math.ceil(num_examples / self.batch_size)


@dataclass
class HeadFit:
    """A trained head at its best-validation epoch: weight (C, D), bias (C,), and how training went."""

    weight: torch.Tensor
    bias: torch.Tensor
    best_val_acc: float
    best_step: int
    steps: int
    examples_seen: int
    train_seconds: float


def init_head(num_classes: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """Augmented parameter [W | b] (C, D+1) drawn like nn.Linear's default: U(-1/sqrt(D), 1/sqrt(D))."""
    bound = 1.0 / math.sqrt(dim)
    return (torch.rand(num_classes, dim + 1, generator=generator) * 2 - 1) * bound


def augment(features: torch.Tensor) -> torch.Tensor:
    """Features with a column of ones appended, so that [W | b] acts as a Linear layer with bias."""
    ones = torch.ones(*features.shape[:-1], 1, dtype=features.dtype, device=features.device)
    return torch.cat([features, ones], -1)


class AdamW:
    """torch.optim.AdamW (betas=(0.9, 0.999), eps=1e-8) on a batch of heads (K, C, D+1), given the gradient
    and each head's learning rate; the bias corrections are folded into two scalars per step."""

    def __init__(self, params: torch.Tensor, weight_decay: float) -> None:
        self.params = params
        self.weight_decay = weight_decay
        self.exp_avg = torch.zeros_like(params)
        self.exp_avg_sq = torch.zeros_like(params)
        self.t = 0

    def step(self, grad: torch.Tensor, lr: torch.Tensor) -> None:
        """One AdamW update in place; `lr` (K, 1, 1) holds each head's learning rate for this step."""
        self.t += 1
        root_correction = math.sqrt(1 - BETA2**self.t)
        self.params.mul_(1 - lr * self.weight_decay)
        self.exp_avg.lerp_(grad, 1 - BETA1)
        self.exp_avg_sq.mul_(BETA2).addcmul_(grad, grad, value=1 - BETA2)
        denom = self.exp_avg_sq.sqrt().add_(EPS * root_correction)
        self.params.sub_(self.exp_avg.div(denom).mul_(lr * (root_correction / (1 - BETA1**self.t))))


def fit_linear_heads(
    features: torch.Tensor,
    labels: torch.Tensor,
    train_rows: torch.Tensor,
    val_rows: torch.Tensor,
    num_classes: int,
    schedules: Sequence[HeadSchedule],
    generators: Sequence[torch.Generator],
    on_eval: EvalCallback | None = None,
    where: Sequence[str] | None = None,
    init: torch.Tensor | None = None,
) -> list[HeadFit]:
    """Train K Linear heads on rows of one feature matrix, evaluating each on its val rows after every epoch.

    features (N, D) and labels (N,) on one device; train_rows (K, n) and val_rows (K, m) index them, one row
    per head; schedules and generators, one per head, differ only in learning rate (and seed). Each head
    draws its init and its epoch orders from its own generator, as a head trained alone would; `init`
    (K, C, D+1), when given, is the heads' starting [W | b] instead (the generators then draw orders only).
    `on_eval(head, step, train_loss, val_acc, best_val_acc)` is called per head at each evaluation;
    train_loss is the mean cross-entropy over the epoch's minibatches (per example). Each head's best
    validation epoch is kept.
    """
    heads, n = train_rows.shape
    first = schedules[0]
    if len({(s.batch_size, s.epochs, s.warmup_steps, s.min_lr, s.weight_decay) for s in schedules}) != 1:
        raise ValueError("heads trained together must share all settings but the learning rate")
    device = features.device
    where = list(where) if where is not None else ["linear probe"] * heads
    fa = augment(features.float())
    onehot = torch.nn.functional.one_hot(labels, num_classes).to(fa.dtype)
    total = first.total_steps(n)
    base_lrs = torch.tensor([s.lr for s in schedules], dtype=torch.float64)
    table = warmup_cosine_table(
        base_lrs, total_steps=total, warmup_steps=first.warmup_steps, min_lr=first.min_lr
    )
    lr = table.to(device=device, dtype=fa.dtype).view(total, heads, 1, 1)
    if init is None:
        init = torch.stack([init_head(num_classes, features.shape[1], g) for g in generators])
    params = init.to(device=device, dtype=fa.dtype, copy=True)
    optimiser = AdamW(params, first.weight_decay)
    shared_val = bool((val_rows == val_rows[:1]).all())
    val_x = fa[val_rows[0]] if shared_val else fa[val_rows]
    val_y = labels[val_rows]
    best = [BestTracker() for _ in range(heads)]
    batch = first.batch_size
    step = 0
    start = time.perf_counter()
    for _ in range(first.epochs):
        order = torch.stack([torch.randperm(n, generator=g) for g in generators]).to(device)
        epoch_rows = train_rows.gather(1, order)
        log_likelihood = torch.zeros(heads, dtype=fa.dtype, device=device)
        for lo in range(0, n, batch):
            rows = epoch_rows[:, lo : lo + batch]
            xb, yb = fa[rows], onehot[rows]
            log_p = torch.log_softmax(torch.bmm(xb, params.transpose(1, 2)), -1)
            log_likelihood += (log_p * yb).sum((1, 2))
            grad = torch.bmm(log_p.exp_().sub_(yb).transpose(1, 2), xb).div_(rows.shape[1])
            optimiser.step(grad, lr[step])
            step += 1
        train_loss = (log_likelihood / -n).tolist()
        val_pred = torch.matmul(val_x, params.transpose(1, 2)).argmax(-1)
        val_acc = (val_pred == val_y).float().mean(1).tolist()
        for k in range(heads):
            ensure_finite_loss(train_loss[k], step, where[k])
            best[k].update(step, val_acc[k], lambda k=k: {"head": params[k]})
            if on_eval is not None:
                on_eval(k, step, train_loss[k], val_acc[k], best[k].value)
    seconds = time.perf_counter() - start
    return [
        HeadFit(
            weight=b.state["head"][:, :-1].contiguous(),
            bias=b.state["head"][:, -1].contiguous(),
            best_val_acc=b.value,
            best_step=b.step,
            steps=step,
            examples_seen=n * first.epochs,
            train_seconds=seconds,
        )
        for b in best
    ]
