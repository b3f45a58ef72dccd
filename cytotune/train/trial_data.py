"""The rows one trial uses: its train subset (few-shot, fraction or full), validation and test rows."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cytotune.config import TrialConfig, TrialTemplate
from cytotune.data import (
    Manifest,
    few_shot_indices,
    fraction_indices,
    prepare_dataset,
    test_indices,
    train_indices,
    validation_indices,
)
from cytotune.errors import CytotuneError


@dataclass(frozen=True)
class TrialData:
    """A manifest and the positional rows of a trial's train subset, validation and test sets."""

    manifest: Manifest
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def labels(self, rows: np.ndarray) -> np.ndarray:
        """Integer labels of the given rows."""
        return self.manifest.frame["label"].to_numpy()[rows]

    def label_tensor(self) -> torch.Tensor:
        """Labels of every manifest row, int64 on the CPU."""
        return torch.tensor(self.manifest.frame["label"].to_numpy(), dtype=torch.int64)


def trial_manifest(cfg: TrialTemplate) -> Manifest:
    """The prepared manifest of the trial's (or a study cell's) dataset (built once, then read back)."""
    return prepare_dataset(
        cfg.dataset_layout,
        cfg.root,
        level=cfg.level,
        split=cfg.split,
        split_seed=cfg.split_seed,
        cache_dir=cfg.cache_dir,
    )


def trial_rows(cfg: TrialConfig, manifest: Manifest) -> TrialData:
    """The trial's rows of a manifest: shots per class, a fraction, or all the train split; val; test."""
    frame = manifest.frame
    if cfg.shots is not None:
        train = few_shot_indices(frame, cfg.shots, cfg.seed, repeat=cfg.train.short_class == "repeat")
    elif cfg.fraction is not None:
        train = fraction_indices(frame, cfg.fraction, cfg.seed)
    else:
        train = train_indices(frame)
    val = validation_indices(frame, shots=cfg.shots, seed=cfg.seed, mode=cfg.train.validation)
    test = test_indices(frame)
    for role, rows in (("train", train), ("validation", val), ("test", test)):
        if len(rows) == 0:
            raise CytotuneError(
                f"dataset {cfg.dataset} at {cfg.root}: no {role} images; expected at least one"
            )
    return TrialData(manifest, *(np.asarray(rows, dtype=np.int64) for rows in (train, val, test)))


def trial_data(cfg: TrialConfig) -> TrialData:
    """Prepare the trial's dataset and pick its rows."""
    return trial_rows(cfg, trial_manifest(cfg))


def write_trial_manifest(data: TrialData, path: Path) -> Path:
    """Write the rows the trial used as CSV (path, label, split, role in train/val/test); return the path."""
    frame = data.manifest.frame
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split", "role"])
        for role, rows in (("train", data.train), ("val", data.val), ("test", data.test)):
            for row in rows:
                writer.writerow(
                    [frame["path"].iat[row], int(frame["label"].iat[row]), frame["split"].iat[row], role]
                )
    return path
