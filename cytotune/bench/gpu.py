"""`cytotune bench gpu`: what one accelerator does with B/16- and L/14-sized backbones (random weights).

Feature extraction (the linear probe's one pass) and LoRA training steps (the paper's settings: q,v r=2 on
B/16; q,k,v,o r=16 on L/14) in bf16 autocast, each with SDPA's fused kernels on and off (off = the math
kernel), channels-last input and `torch.compile`, at few-shot and large batches. Every case reports images per
second over a timed window after warm-up, and the device's peak memory. Inputs are random tensors already on
the device: the figures are the model's, not the data loader's.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from cytotune.bench.common import synchronize
from cytotune.config import LoraSettings
from cytotune.models import load_backbone
from cytotune.models.lora import add_lora
from cytotune.train.runtime import autocast

BACKBONES = ("clip_vit_b16@random", "clip_vit_l14@random")
# The paper's LoRA settings per backbone size: q,v r=2 for B/16; q,k,v,o r=16 for L/14.
LORA = {
    "clip_vit_b16@random": LoraSettings(rank=2, targets=("q", "v")),
    "clip_vit_l14@random": LoraSettings(rank=16, targets=("q", "k", "v", "o")),
}
DEFAULT_LORA = LoraSettings()
LORA_BATCHES = (4, 32, 256)
FEATURE_BATCH = 256
CLASSES = 8


@dataclass(frozen=True)
class GpuCase:
    """One measurement: a backbone, what it does (features or lora), a batch size and the switches."""

    backbone: str
    task: str
    batch: int
    sdpa: bool = True
    channels_last: bool = False
    compiled: bool = False

    def label(self) -> str:
        """Short name of the switches that differ from the baseline."""
        flags = (("channels-last", self.channels_last), ("compile", self.compiled))
        switches = [name for name, on in flags if on]
        if not self.sdpa:
            switches.append("math attention")
        return ", ".join(switches) or "baseline"


@dataclass(frozen=True)
class GpuFigure:
    """A case's throughput (images/s), the timed steps and seconds, and the device's peak memory (MiB)."""

    case: GpuCase
    images_per_s: float
    steps: int
    seconds: float
    peak_mib: float


def plan_cases(
    backbones: Iterable[str] = BACKBONES,
    lora_batches: Iterable[int] = LORA_BATCHES,
    feature_batch: int = FEATURE_BATCH,
    compile_cases: bool = True,
) -> list[GpuCase]:
    """Per backbone: features at `feature_batch` and LoRA at each batch (baseline), then at the largest
    batch of each task the switches one at a time (math attention, channels-last, compile)."""
    cases = []
    batches = sorted(lora_batches)
    for name in backbones:
        cases.append(GpuCase(name, "features", feature_batch))
        cases += [GpuCase(name, "lora", b) for b in batches]
        for task, batch in (("features", feature_batch), ("lora", batches[-1])):
            cases.append(GpuCase(name, task, batch, sdpa=False))
            cases.append(GpuCase(name, task, batch, channels_last=True))
            if compile_cases:
                cases.append(GpuCase(name, task, batch, compiled=True))
    return cases


def _step_function(case: GpuCase, device: torch.device) -> tuple[Callable[[], None], torch.Tensor]:
    """The callable that runs one step of `case`, and its input batch."""
    backbone = load_backbone(case.backbone).to(device)
    size = backbone.spec.input_size
    images = torch.randn(case.batch, 3, size, size, device=device)
    if case.channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    if case.task == "features":
        backbone.eval().requires_grad_(False)
        model = torch.compile(backbone) if case.compiled else backbone

        def extract() -> None:
            with torch.inference_mode(), autocast(device):
                model(images)

        return extract, images
    add_lora(backbone, LORA.get(case.backbone, DEFAULT_LORA)).train()
    head = nn.Linear(backbone.spec.feature_dim, CLASSES, device=device)
    params = [p for p in backbone.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    labels = torch.randint(0, CLASSES, (case.batch,), device=device)
    model = torch.compile(backbone) if case.compiled else backbone

    def train_step() -> None:
        with autocast(device):
            loss = nn.functional.cross_entropy(head(model(images)).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return train_step, images


def measure(case: GpuCase, device: torch.device, *, seconds: float = 5.0, warmup: int = 3) -> GpuFigure:
    """Warm `case` up (compilation included), then run steps for at least `seconds` and at least 3 steps."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    kernels = contextlib.nullcontext() if case.sdpa else sdpa_kernel(SDPBackend.MATH)
    with kernels:
        step, _ = _step_function(case, device)
        for _ in range(warmup):
            step()
        synchronize(device)
        steps, start = 0, time.perf_counter()
        while steps < 3 or time.perf_counter() - start < seconds:
            step()
            steps += 1
            if steps % 5 == 0:
                synchronize(device)
        synchronize(device)
        elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return GpuFigure(case, case.batch * steps / elapsed, steps, elapsed, peak)


def run_gpu_bench(
    cases: Iterable[GpuCase],
    out: Path,
    *,
    device: torch.device,
    seconds: float = 5.0,
    say: Callable[[str], None] = print,
) -> list[GpuFigure]:
    """Measure every case in turn, saying each figure as it comes and rewriting `out` (JSON) after each, so
    an interrupted run keeps what it measured."""
    figures: list[GpuFigure] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type}
    info["torch"] = torch.__version__
    for case in cases:
        figures.append(measure(case, device, seconds=seconds))
        say(format_row(figures[-1]))
        payload = {**info, "figures": [{**asdict(f.case), **_numbers(f)} for f in figures]}
        out.write_text(json.dumps(payload, indent=2))
    return figures


def _numbers(figure: GpuFigure) -> dict:
    return {
        "images_per_s": figure.images_per_s,
        "steps": figure.steps,
        "seconds": figure.seconds,
        "peak_mib": figure.peak_mib,
    }


HEADER = f"{'backbone':<22} {'task':<9} {'batch':>5}  {'switches':<16} {'img/s':>10} {'peak MiB':>9}"


def format_row(figure: GpuFigure) -> str:
    """One table row of a figure."""
    c = figure.case
    return (
        f"{c.backbone:<22} {c.task:<9} {c.batch:>5}  {c.label():<16} {figure.images_per_s:>10.1f} "
        f"{figure.peak_mib:>9.0f}"
    )
