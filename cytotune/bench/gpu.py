"""`cytotune bench gpu`: what one accelerator does with B/16- and L/14-sized backbones (random weights).

Feature extraction (the linear probe's one pass) and LoRA training steps (the paper's settings: q,v r=2 on
B/16; q,k,v,o r=16 on L/14) in bf16 autocast, each with SDPA's fused kernels on and off (off = the math
kernel), channels-last input and `torch.compile`, at few-shot and large batches; and at few-shot batches
a packed cell (a 5 lr x 3 seed sweep as 15 grouped LoRA adapters and heads sharing one backbone pass, as
`pack: true` trains it) beside the separate trial. Every case reports images per second (a pack: all its
configurations' images) over a timed window after warm-up, and the device's peak memory. Inputs are random
tensors already on the device: the figures are the model's, not the data loader's.
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
from cytotune.models.grouped_lora import ADAPTER, add_grouped_lora
from cytotune.models.lora import add_lora, lora_target_modules
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
PACK = 15  # configurations of a packed cell: 5 learning rates x 3 seeds
PACKED_MAX_BATCH = 32  # packs are measured at few-shot batches, where one trial leaves the device idle


@dataclass(frozen=True)
class GpuCase:
    """One measurement: a backbone, what it does (features, lora, or packed: `configurations` LoRA trials
    in one pass, each with its own batch), a batch size and the switches."""

    backbone: str
    task: str
    batch: int
    sdpa: bool = True
    channels_last: bool = False
    compiled: bool = False
    configurations: int = 1

    @property
    def images_per_step(self) -> int:
        """Images one step sends through the backbone (every configuration's batch for a pack)."""
        return self.batch * self.configurations

    def label(self) -> str:
        """Short name of the switches that differ from the baseline."""
        flags = (("channels-last", self.channels_last), ("compile", self.compiled))
        switches = [name for name, on in flags if on]
        if self.configurations > 1:
            switches.append(f"{self.configurations} packed")
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
    pack: int = PACK,
) -> list[GpuCase]:
    """Per backbone: features at `feature_batch` and LoRA at each batch (baseline), a pack of `pack`
    configurations at each batch up to PACKED_MAX_BATCH (none when `pack` < 2), then at the largest batch of
    each task the switches one at a time (math attention, channels-last, compile)."""
    cases = []
    batches = sorted(lora_batches)
    for name in backbones:
        cases.append(GpuCase(name, "features", feature_batch))
        cases += [GpuCase(name, "lora", b) for b in batches]
        if pack > 1:
            cases += [
                GpuCase(name, "packed", b, configurations=pack) for b in batches if b <= PACKED_MAX_BATCH
            ]
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
    images = torch.randn(case.images_per_step, 3, size, size, device=device)
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
    if case.task == "packed":
        return _packed_step(backbone, case, images, device), images
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


def _packed_step(backbone: nn.Module, case: GpuCase, images: torch.Tensor, device: torch.device):
    """One training step of `case.configurations` LoRA trials packed on one backbone: grouped adapters
    (A random, B zero, as peft starts them), a head each, every configuration's block of the batch."""
    settings = LORA.get(case.backbone, DEFAULT_LORA)
    k = case.configurations
    layers = {name: backbone.get_submodule(name) for name in lora_target_modules(backbone, settings)}
    adapters = [
        {
            key: tensor
            for name, layer in layers.items()
            for key, tensor in (
                (
                    f"{name}.lora_A.{ADAPTER}.weight",
                    torch.randn(settings.rank, layer.in_features, device=device),
                ),
                (
                    f"{name}.lora_B.{ADAPTER}.weight",
                    torch.zeros(layer.out_features, settings.rank, device=device),
                ),
            )
        }
        for _ in range(k)
    ]
    generators = [torch.Generator(device=device).manual_seed(i) for i in range(k)]
    add_grouped_lora(backbone, settings, adapters, generators).train()
    dim = backbone.spec.feature_dim
    weight = nn.Parameter(torch.randn(k, CLASSES, dim, device=device) / dim**0.5)
    bias = nn.Parameter(torch.zeros(k, CLASSES, device=device))
    params = [p for p in backbone.parameters() if p.requires_grad] + [weight, bias]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    labels = torch.randint(0, CLASSES, (k * case.batch,), device=device)
    model = torch.compile(backbone) if case.compiled else backbone

    def train_step() -> None:
        with autocast(device):
            features = model(images).view(k, case.batch, dim)
            logits = torch.baddbmm(bias.unsqueeze(1), features, weight.transpose(1, 2))
        # the sum over configurations of each one's mean loss: every configuration trains as if alone
        loss = nn.functional.cross_entropy(logits.float().reshape(-1, CLASSES), labels) * k
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return train_step


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
    return GpuFigure(case, case.images_per_step * steps / elapsed, steps, elapsed, peak)


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


def pack_ratios(figures: Iterable[GpuFigure]) -> list[str]:
    """Per backbone and batch, a packed cell's images/s over the separate trial's (both baseline switches)."""
    separate = {
        (f.case.backbone, f.case.batch): f.images_per_s
        for f in figures
        if f.case.task == "lora" and f.case.label() == "baseline"
    }
    lines = []
    for f in figures:
        alone = separate.get((f.case.backbone, f.case.batch))
        if f.case.task == "packed" and f.case.label() == f"{f.case.configurations} packed" and alone:
            lines.append(
                f"{f.case.backbone} batch {f.case.batch}: {f.case.configurations} configurations packed "
                f"{f.images_per_s / alone:.2f}x the images/s of one separate trial"
            )
    return lines
