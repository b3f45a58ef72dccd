"""Training a linear head (Linear with bias) on cached features: tensor ops only, one matmul pair per step.

The optimiser is AdamW written out on one augmented parameter [W | b] with the gradient of the mean
cross-entropy in closed form; it follows torch.optim.AdamW step for step (a test holds them equal) at a
quarter of the cost per step, which keeps a probe sweep cheap against the feature extraction it needs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from cytotune.train.best import BestTracker
from cytotune.train.guard import ensure_finite_loss
from cytotune.train.schedule import warmup_cosine_lr

BETA1 = 0.9
BETA2 = 0.999
EPS = 1e-8


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
    return torch.cat(
        [features, torch.ones(features.shape[0], 1, dtype=features.dtype, device=features.device)], 1
    )


def head_logits(params: torch.Tensor, features_aug: torch.Tensor) -> torch.Tensor:
    """Logits of the head [W | b] on augmented features."""
    return features_aug @ params.T


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits against integer labels (a 0-d tensor)."""
    return (torch.logsumexp(logits, 1) - logits.gather(1, labels[:, None]).squeeze(1)).mean()


class AdamW:
    """torch.optim.AdamW (defaults betas=(0.9, 0.999), eps=1e-8) on a single tensor with a given gradient."""

    def __init__(self, params: torch.Tensor, weight_decay: float) -> None:
        self.params = params
        self.weight_decay = weight_decay
        self.exp_avg = torch.zeros_like(params)
        self.exp_avg_sq = torch.zeros_like(params)
        self.t = 0

    def step(self, grad: torch.Tensor, lr: float) -> None:
        """One AdamW update of the parameters in place with learning rate `lr`."""
        self.t += 1
        self.params.mul_(1 - lr * self.weight_decay)
        self.exp_avg.lerp_(grad, 1 - BETA1)
        self.exp_avg_sq.mul_(BETA2).addcmul_(grad, grad, value=1 - BETA2)
        denom = self.exp_avg_sq.sqrt().div_(math.sqrt(1 - BETA2**self.t)).add_(EPS)
        self.params.addcdiv_(self.exp_avg, denom, value=-lr / (1 - BETA1**self.t))


def fit_linear_head(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int,
    schedule: HeadSchedule,
    generator: torch.Generator,
    on_eval: Callable[[int, float, float, float], None] | None = None,
    where: str = "linear probe",
) -> HeadFit:
    """Train a Linear head on features (all tensors on one device), evaluating on val after every epoch.

    `on_eval(step, train_loss, val_acc, best_val_acc)` is called at each evaluation; train_loss is the mean
    cross-entropy of the current head over the whole train subset. The head of the best validation epoch is
    kept.
    """
    device = train_x.device
    n = train_x.shape[0]
    xa = augment(train_x.float())
    va = augment(val_x.float())
    onehot = torch.nn.functional.one_hot(train_y, num_classes).to(xa.dtype)
    params = init_head(num_classes, train_x.shape[1], generator).to(device)
    optimiser = AdamW(params, schedule.weight_decay)
    total = schedule.total_steps(n)
    best = BestTracker()
    step = 0
    start = time.perf_counter()
    for _ in range(schedule.epochs):
        order = torch.randperm(n, generator=generator).to(device)
        xe, ye = xa[order], onehot[order]
        for lo in range(0, n, schedule.batch_size):
            xb, yb = xe[lo : lo + schedule.batch_size], ye[lo : lo + schedule.batch_size]
            grad = torch.softmax(xb @ params.T, 1).sub_(yb).T @ xb
            grad.div_(xb.shape[0])
            lr = warmup_cosine_lr(
                step,
                base_lr=schedule.lr,
                total_steps=total,
                warmup_steps=schedule.warmup_steps,
                min_lr=schedule.min_lr,
            )
            optimiser.step(grad, lr)
            step += 1
        train_loss = float(cross_entropy(head_logits(params, xa), train_y))
        ensure_finite_loss(train_loss, step, where)
        val_acc = float((head_logits(params, va).argmax(1) == val_y).float().mean())
        best.update(step, val_acc, lambda: {"head": params})
        if on_eval is not None:
            on_eval(step, train_loss, val_acc, best.value)
    seconds = time.perf_counter() - start
    head = best.state["head"]
    return HeadFit(
        weight=head[:, :-1].contiguous(),
        bias=head[:, -1].contiguous(),
        best_val_acc=best.value,
        best_step=best.step,
        steps=step,
        examples_seen=n * schedule.epochs,
        train_seconds=seconds,
    )
