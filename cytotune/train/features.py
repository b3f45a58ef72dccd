"""The linear probe's feature cache: one frozen-backbone pass over a whole manifest, shared by all trials.

Features are keyed by the backbone and its weights, the manifest digest and the preprocessing. The first trial
to need them computes them under a file lock while the others wait, then read; the file is written to a
temporary name and renamed into place, so a half-written cache is never read.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cytotune.config import TrialTemplate
from cytotune.data import Manifest, open_eval_cache
from cytotune.data.cache import CACHE_LAYOUT
from cytotune.data.files import atomic_write_bytes, file_lock
from cytotune.data.progress_bar import progress_bar
from cytotune.data.transforms import eval_transform
from cytotune.models import get_backbone_spec, load_backbone
from cytotune.models.params import count_parameters
from cytotune.models.registry import BackboneRef
from cytotune.models.weights import resolve_weights
from cytotune.train.runtime import autocast, precision_name


def weights_identity(backbone: BackboneRef, weights: Path | None) -> dict:
    """What identifies a backbone's weights: the file it loads (path, size, mtime; for a YAML backbone, its
    file in the hub cache or its local folder), else its registry entry (test-size backbones: seeded random
    weights)."""
    spec = get_backbone_spec(backbone)
    path = resolve_weights(spec, weights)
    if path is not None:
        stat = Path(path).stat()
        return {"file": str(Path(path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return {"identifier": spec.identifier, "pretrained": spec.pretrained}


def feature_key(
    manifest: Manifest, backbone: BackboneRef, weights: Path | None, device: torch.device
) -> dict:
    """Everything the cached features depend on, as a JSON-able dict."""
    spec = get_backbone_spec(backbone)
    return {
        "backbone": spec.name,
        "weights": weights_identity(backbone, weights),
        "feature": spec.feature,
        "manifest": manifest.digest,
        "eval_view": f"resize shorter side, centre crop; cache layout {CACHE_LAYOUT}",
        "input_size": spec.input_size,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "precision": precision_name(device),
    }


def feature_path(cache_dir: Path, key: dict) -> Path:
    """Where the features for `key` live under cache_dir."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return Path(cache_dir) / "features" / f"{key['backbone']}-{digest}.npy"


@dataclass(frozen=True)
class CachedFeatures:
    """Features (N, feature_dim) float32 of a whole manifest in manifest order, the backbone's parameter
    count, and whether this call computed them (False: read from the cache)."""

    features: np.ndarray
    backbone_params: int
    computed: bool


def extract_features(
    manifest: Manifest,
    backbone: BackboneRef,
    weights: Path | None,
    *,
    cache_dir: Path,
    batch_size: int,
    device: torch.device,
) -> tuple[np.ndarray, int]:
    """Features (N, feature_dim) float32 of every image of the manifest through the frozen backbone with the
    evaluation preprocessing, and the backbone's parameter count; a progress bar shows on a terminal."""
    spec = get_backbone_spec(backbone)
    model = load_backbone(backbone, weights=weights).to(device).eval()
    images = open_eval_cache(manifest, spec.input_size, cache_dir)
    n = len(manifest.frame)
    out = np.empty((n, spec.feature_dim), dtype=np.float32)
    with progress_bar(f"features {spec.name}", n) as advance, torch.inference_mode():
        for lo in range(0, n, batch_size):
            rows = np.arange(lo, min(lo + batch_size, n))
            x = eval_transform(images.batch(rows).to(device), spec.input_size, spec.mean, spec.std)
            with autocast(device):
                z = model(x)
            out[rows] = z.float().cpu().numpy()
            advance(len(rows))
    return out, count_parameters(model)[1]


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def cached_features(
    manifest: Manifest,
    backbone: BackboneRef,
    weights: Path | None,
    *,
    cache_dir: Path,
    batch_size: int,
    device: torch.device,
) -> CachedFeatures:
    """The manifest's features from the cache, computing them first (once, under a lock) when missing."""
    key = feature_key(manifest, backbone, weights, device)
    path = feature_path(cache_dir, key)
    info = path.with_suffix(".json")
    if not path.exists():
        with file_lock(path.with_suffix(".lock")):
            if not path.exists():
                features, params = extract_features(
                    manifest,
                    backbone,
                    weights,
                    cache_dir=cache_dir,
                    batch_size=batch_size,
                    device=device,
                )
                text = json.dumps({"key": key, "backbone_params": params}, indent=1, sort_keys=True)
                atomic_write_bytes(info, text.encode())
                atomic_write_bytes(path, _npy_bytes(features))
                return CachedFeatures(features, params, True)
    params = json.loads(info.read_text())["backbone_params"]
    return CachedFeatures(np.load(path), int(params), False)


@dataclass(frozen=True)
class FeatureRequest:
    """The probe features a trial reads: its whole manifest through its backbone (and weights) on a device,
    in batches of batch_size, from the feature cache under cache_dir."""

    manifest: Manifest
    backbone: BackboneRef
    weights: Path | None
    device: torch.device
    batch_size: int
    cache_dir: Path

    def key(self) -> dict:
        """The cache key of these features (see feature_key)."""
        return feature_key(self.manifest, self.backbone, self.weights, self.device)

    def path(self) -> Path:
        """Where these features are cached."""
        return feature_path(self.cache_dir, self.key())

    def cached(self) -> CachedFeatures:
        """The features from the cache, computed first when missing (see cached_features)."""
        return cached_features(
            self.manifest,
            self.backbone,
            self.weights,
            cache_dir=self.cache_dir,
            batch_size=self.batch_size,
            device=self.device,
        )


def feature_request(cfg: TrialTemplate, manifest: Manifest, device: torch.device) -> FeatureRequest:
    """The probe features of a trial config (or of a study cell's template) on `device`: the one place the
    feature cache's arguments come from, for the trainers and for the study's preparation on the driver."""
    return FeatureRequest(
        manifest=manifest,
        backbone=cfg.backbone_ref,
        weights=cfg.weights,
        device=device,
        batch_size=cfg.train.eval_batch_size,
        cache_dir=cfg.cache_dir,
    )
