"""Manifests: one row per image with its class, split and content hash, written once next to the data."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from cytotune.config import DEFAULT_SPLIT, default_cache_dir
from cytotune.data.files import atomic_write_bytes, file_lock, is_writable_dir
from cytotune.data.images import inspect_image
from cytotune.data.progress_bar import map_with_progress
from cytotune.data.registry import DatasetListing, DatasetSpec, get_dataset
from cytotune.data.splits import SPLITS, check_split_fractions, stratified_split
from cytotune.errors import CytotuneError

log = logging.getLogger("cytotune.data")

MANIFEST_FORMAT = 1
MANIFEST_COLUMNS = ["path", "class_name", "label", "split", "sha1"]


@dataclass(frozen=True, eq=False)
class Manifest:
    """A prepared dataset: classes in fixed order and one row per image (positional row i is image i of the
    image cache). `frame` columns: path (relative to root), class_name, label, split, sha1."""

    dataset: str
    root: Path
    classes: tuple[str, ...]
    digest: str
    frame: pd.DataFrame
    level: int = 3
    split: tuple[float, float, float] | None = DEFAULT_SPLIT
    split_seed: int = 0
    path: Path | None = None
    dropped: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.frame)

    def image_path(self, index: int) -> Path:
        """Absolute path of image `index`."""
        return self.root / self.frame["path"].iat[index]

    def counts(self) -> pd.DataFrame:
        """Images per class (rows, in class order) and split (columns train, val, test, total)."""
        table = pd.crosstab(self.frame["class_name"], self.frame["split"])
        table = table.reindex(index=list(self.classes), columns=list(SPLITS), fill_value=0)
        table["total"] = table.sum(axis=1)
        table.index.name = "class"
        table.columns.name = None
        return table


def _settings(spec: DatasetSpec, level: int, split: tuple[float, float, float], split_seed: int) -> dict:
    return {
        "format": MANIFEST_FORMAT,
        "dataset": spec.name,
        "level": level if spec.uses_level else None,
        "split": "official" if spec.official_split else list(split),
        "split_seed": None if spec.official_split else split_seed,
    }


def _fingerprint(root: Path, listing: DatasetListing) -> str:
    """Cheap identity of the files a listing names: paths, sizes, modification times, sources' bytes."""
    sha = hashlib.sha1()
    for rel in listing.frame["path"]:
        stat = (root / rel).stat()
        sha.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    for rel in listing.sources:
        sha.update(rel.encode() + b"\0" + (root / rel).read_bytes())
    sha.update(json.dumps([listing.classes, listing.missing]).encode())
    return sha.hexdigest()


def _digest(classes: Sequence[str], frame: pd.DataFrame) -> str:
    sha = hashlib.sha1(json.dumps(list(classes)).encode())
    sha.update(frame[MANIFEST_COLUMNS].to_csv(index=False).encode())
    return sha.hexdigest()


def _locations(root: Path, name: str, key: str, cache_dir: Path | None) -> list[Path]:
    """Where the manifest may live, preferred first: next to the data, then under the cache dir."""
    stem = f"manifest-{name}-{key}"
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root_key = hashlib.sha1(str(root).encode()).hexdigest()[:12]
    return [root / ".cytotune" / stem, cache / "manifests" / f"{root.name}-{root_key}" / stem]


def _read(stem: Path, fingerprint: str, settings: dict, root: Path) -> Manifest | None:
    meta_path, csv_path = stem.with_suffix(".json"), stem.with_suffix(".csv")
    try:
        meta = json.loads(meta_path.read_text())
        data = csv_path.read_bytes()
    except (OSError, ValueError):
        return None
    if meta.get("settings") != settings or meta.get("fingerprint") != fingerprint:
        return None
    if hashlib.sha1(data).hexdigest() != meta.get("csv_sha1"):
        return None
    columns = {"path": str, "class_name": str, "split": str, "sha1": str}
    frame = pd.read_csv(io.BytesIO(data), dtype=columns, keep_default_na=False)
    return _manifest(root, meta, frame, stem)


def _manifest(root: Path, meta: dict, frame: pd.DataFrame, stem: Path) -> Manifest:
    settings = meta["settings"]
    split = None if settings["split"] == "official" else tuple(settings["split"])
    return Manifest(
        dataset=settings["dataset"],
        root=root,
        classes=tuple(meta["classes"]),
        digest=meta["digest"],
        frame=frame,
        level=settings["level"] if settings["level"] is not None else 3,
        split=split,
        split_seed=settings["split_seed"] if settings["split_seed"] is not None else 0,
        path=stem.with_suffix(".csv"),
        dropped=tuple(meta.get("dropped", ())),
    )


def _unreadable_error(root: Path, bad: list[tuple[str, str]]) -> CytotuneError:
    listed = "; ".join(f"{path} ({reason})" for path, reason in bad)
    return CytotuneError(
        f"{len(bad)} unreadable or missing images under {root}: {listed}; expected decodable images: "
        "fix or remove them, or pass --skip-corrupt (skip_corrupt=True) to drop them"
    )


def _check_duplicates(frame: pd.DataFrame) -> None:
    spread = frame.groupby("sha1")["split"].nunique()
    leaking = spread[spread > 1].index
    if len(leaking):
        rows = frame[frame["sha1"] == leaking[0]].drop_duplicates("split")
        first, second = rows.iloc[0], rows.iloc[1]
        others = f" ({len(leaking) - 1} more images are in several splits)" if len(leaking) > 1 else ""
        raise CytotuneError(
            f"the same image is in two splits: {first['path']} ({first['split']}) and {second['path']} "
            f"({second['split']}){others}; expected each image in one split: remove the copy"
        )


def _build_frame(
    spec: DatasetSpec,
    root: Path,
    listing: DatasetListing,
    split: tuple[float, float, float],
    split_seed: int,
    skip_corrupt: bool,
) -> tuple[pd.DataFrame, list[str]]:
    frame = listing.frame.reset_index(drop=True)
    inspected = map_with_progress(
        lambda rel: inspect_image(root / rel), list(frame["path"]), "checking images"
    )
    frame["sha1"] = [sha1 for sha1, _ in inspected]
    bad = [(f"missing {name}", "not found") for name in listing.missing]
    bad += [
        (rel, reason) for rel, (_, reason) in zip(frame["path"], inspected, strict=True) if reason is not None
    ]
    if bad and not skip_corrupt:
        raise _unreadable_error(root, bad)
    if bad:
        log.warning("skipped %d unreadable or missing images under %s", len(bad), root)
        frame = frame[[reason is None for _, reason in inspected]].reset_index(drop=True)
    class_index = {name: i for i, name in enumerate(listing.classes)}
    frame["label"] = frame["class_name"].map(class_index).astype(int)
    present = set(frame["class_name"])
    absent = [c for c in listing.classes if c not in present]
    if absent:
        raise CytotuneError(
            f"{spec.name}: no readable images left for classes {', '.join(absent)} under {root}"
        )
    if not spec.official_split:
        frame["split"] = stratified_split(
            frame["label"].to_numpy(), frame["sha1"].to_numpy(), split, split_seed
        )
    _check_duplicates(frame)
    frame = frame.sort_values(["label", "path"], kind="stable").reset_index(drop=True)
    return frame[MANIFEST_COLUMNS], [path for path, _ in bad]


@dataclass(frozen=True)
class _Lookup:
    spec: DatasetSpec
    root: Path
    listing: DatasetListing
    settings: dict
    fingerprint: str
    stems: list[Path]

    def read(self) -> Manifest | None:
        for stem in self.stems:
            found = _read(stem, self.fingerprint, self.settings, self.root)
            if found is not None:
                return found
        return None


def _lookup(
    name: str,
    root: Path | str,
    level: int,
    split: Sequence[float],
    split_seed: int,
    cache_dir: Path | str | None,
) -> _Lookup:
    spec = get_dataset(name)
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise CytotuneError(f"dataset root {root} {what}: expected the {name} folder ({spec.layout})")
    root = root.resolve()
    if level not in (1, 2, 3):
        raise CytotuneError(f"level={level} is invalid: expected 1, 2 or 3")
    settings = _settings(spec, level, check_split_fractions(split), split_seed)
    listing = spec.loader(root, level)
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    stems = _locations(root, name, key, Path(cache_dir) if cache_dir is not None else None)
    return _Lookup(spec, root, listing, settings, _fingerprint(root, listing), stems)


def prepare_dataset(
    name: str,
    root: Path | str,
    *,
    level: int = 3,
    split: Sequence[float] = DEFAULT_SPLIT,
    split_seed: int = 0,
    skip_corrupt: bool = False,
    cache_dir: Path | str | None = None,
) -> Manifest:
    """The manifest of dataset `name` at `root`: read back when its files are unchanged, else built (every
    image hashed and checked), split, and written atomically next to the data (or under cache_dir when the
    data folder is read-only).

    A manifest built with skip_corrupt is reused by later calls without it (skipped files stay dropped)."""
    found = _lookup(name, root, level, split, split_seed, cache_dir)
    existing = found.read()
    if existing is not None:
        return existing
    stem = next((s for s in found.stems if is_writable_dir(s.parent)), None)
    if stem is None:
        raise CytotuneError(
            f"cannot write a manifest: neither {found.stems[0].parent} nor {found.stems[1].parent}"
        )
    with file_lock(stem.with_suffix(".lock")):
        existing = found.read()
        if existing is not None:
            return existing
        for note in found.listing.notes:
            log.info("%s: %s", name, note)
        split_fractions = check_split_fractions(split)
        frame, dropped = _build_frame(
            found.spec, found.root, found.listing, split_fractions, split_seed, skip_corrupt
        )
        classes = found.listing.classes
        meta = {
            "settings": found.settings,
            "classes": list(classes),
            "digest": _digest(classes, frame),
            "fingerprint": found.fingerprint,
            "images": len(frame),
            "dropped": dropped,
            "notes": list(found.listing.notes),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        data = frame.to_csv(index=False).encode()
        meta["csv_sha1"] = hashlib.sha1(data).hexdigest()
        atomic_write_bytes(stem.with_suffix(".csv"), data)
        atomic_write_bytes(stem.with_suffix(".json"), json.dumps(meta, indent=1).encode())
    log.info("%s: manifest of %d images in %d classes written to %s", name, len(frame), len(classes), stem)
    return _manifest(found.root, meta, frame, stem)


def find_manifest(
    name: str,
    root: Path | str,
    *,
    level: int = 3,
    split: Sequence[float] = DEFAULT_SPLIT,
    split_seed: int = 0,
    cache_dir: Path | str | None = None,
) -> Manifest | None:
    """The prepared, up-to-date manifest of dataset `name` at `root`, or None when it needs preparing."""
    return _lookup(name, root, level, split, split_seed, cache_dir).read()


def scan_dataset(name: str, root: Path | str, *, level: int = 3) -> DatasetListing:
    """What the loader of `name` finds at `root` (classes, paths, official split), without reading images."""
    return _lookup(name, root, level, DEFAULT_SPLIT, 0, None).listing
