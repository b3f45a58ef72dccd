"""`cytotune bench pack`: a cell's LoRA sweep (learning rates x seeds) packed against separate trials.

Per few-shot batch size, the same configurations run twice in one process: as separate run_lora trials, one
after the other, and as packs (run_lora_pack) of as many configurations as fit `max_images_per_pass` images
in one backbone pass. Training throughput comes from the trainers' own timing of their training loops;
wall and CPU time (time.process_time: every thread of the process) cover each side end to end, setup and
evaluation included. Each side's results are compared, configuration by configuration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cytotune.bench.common import PAPER_LRS, PAPER_SEEDS, timed
from cytotune.config import TrainSettings, TrialConfig
from cytotune.data import open_eval_cache, open_image_cache
from cytotune.data.synthetic import generate_synthetic
from cytotune.errors import CytotuneError
from cytotune.models import get_backbone_spec
from cytotune.train.lora_finetune import run_lora
from cytotune.train.packed_lora import run_lora_pack
from cytotune.train.trial_data import trial_data


@dataclass(frozen=True)
class PackBenchRow:
    """One batch size: images trained per side, training-loop seconds, wall and CPU seconds of each side."""

    batch_size: int
    configurations: int
    per_pass: int
    steps: int
    images: int
    separate_train_s: float
    packed_train_s: float
    separate_wall_s: float
    packed_wall_s: float
    separate_cpu_s: float
    packed_cpu_s: float
    same_results: int

    @property
    def throughput_ratio(self) -> float:
        """Packed over separate training images per second (the target at batch 4 on a CPU: >= 1.5)."""
        return self.separate_train_s / self.packed_train_s

    def line(self) -> str:
        """The row as printed by the command."""

        def side(separate: float, packed: float, ratio: float) -> str:
            return f"{separate:8.3g} {packed:8.3g} {ratio:6.2f}x"

        separate_rate, packed_rate = self.images / self.separate_train_s, self.images / self.packed_train_s
        rates = side(separate_rate, packed_rate, packed_rate / separate_rate)
        wall = side(self.separate_wall_s, self.packed_wall_s, self.separate_wall_s / self.packed_wall_s)
        cpu = side(self.separate_cpu_s, self.packed_cpu_s, self.separate_cpu_s / self.packed_cpu_s)
        same = f"{self.same_results}/{self.configurations}"
        return f"{self.batch_size:5d} {self.per_pass:8d} | {rates} | {wall} | {cpu} | {same}"


HEADER = (
    "batch pack-of | train images/s: separate packed  gain | wall s: separate packed  gain | "
    "CPU s: separate packed  gain | same results"
)


def _same(a, b) -> bool:
    return (a.best_val_acc, a.best_step, a.test_acc, a.confusion_matrix) == (
        b.best_val_acc,
        b.best_step,
        b.test_acc,
        b.confusion_matrix,
    )


def bench_pack(
    work_dir: Path,
    *,
    backbone: str = "vit_b16@random",
    batch_sizes: Sequence[int] = (4, 16, 32),
    classes: int = 4,
    steps: int = 3,
    image_size: int = 64,
    max_images_per_pass: int = 64,
    lrs: Sequence[float] = PAPER_LRS,
    seeds: Sequence[int] = PAPER_SEEDS,
    device: str = "auto",
) -> list[PackBenchRow]:
    """Time the sweep of lrs x seeds, separate and packed, at each few-shot batch size (shots x classes), on
    a synthetic set of `classes` generated under work_dir; `steps` optimisation steps per trial."""
    bad = [b for b in batch_sizes if b % classes]
    if bad:
        raise CytotuneError(f"bench pack: batch sizes {bad} are not whole shots of {classes} classes")
    shots_needed = max(batch_sizes) // classes
    per_class = max(8, int(shots_needed / 0.7) + 2)
    root = generate_synthetic(Path(work_dir) / "data", classes=classes, per_class=per_class, size=image_size)
    cache_dir = Path(work_dir) / "cache"
    rows = []
    for batch in batch_sizes:
        settings = TrainSettings(
            batch_size=batch,
            max_steps=steps,
            eval_every=steps,
            warmup_steps=1,
            image_cache_size=image_size,
            device=device,
        )
        cfgs = [
            TrialConfig(
                method="lora",
                backbone=backbone,
                dataset="synthetic",
                root=root,
                cache_dir=cache_dir,
                shots=batch // classes,
                lr=lr,
                seed=seed,
                train=settings,
            )
            for lr in lrs
            for seed in seeds
        ]
        data = trial_data(cfgs[0])
        open_image_cache(data.manifest, size=image_size, cache_dir=cache_dir)
        open_eval_cache(data.manifest, get_backbone_spec(backbone).input_size, cache_dir)
        alone, separate_wall, separate_cpu = timed(lambda cfgs=cfgs: [run_lora(c) for c in cfgs])
        per_pass = max(1, min(len(cfgs), max_images_per_pass // batch))
        packs = [cfgs[lo : lo + per_pass] for lo in range(0, len(cfgs), per_pass)]
        outcomes, packed_wall, packed_cpu = timed(
            lambda packs=packs: [o for pack in packs for o in run_lora_pack(pack)]
        )
        packed = [o.result for o in outcomes]
        trained = steps * batch
        rows.append(
            PackBenchRow(
                batch_size=batch,
                configurations=len(cfgs),
                per_pass=per_pass,
                steps=steps,
                images=trained * len(cfgs),
                separate_train_s=sum(trained / r.images_per_s for r in alone),
                packed_train_s=sum(
                    trained * len(pack) / packed[lo].images_per_s
                    for lo, pack in zip(range(0, len(cfgs), per_pass), packs, strict=True)
                ),
                separate_wall_s=separate_wall,
                packed_wall_s=packed_wall,
                separate_cpu_s=separate_cpu,
                packed_cpu_s=packed_cpu,
                same_results=sum(_same(a, b) for a, b in zip(alone, packed, strict=True)),
            )
        )
    return rows
