"""Plain-text summaries of datasets and manifests, as the command line prints them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cytotune.config import DEFAULT_SPLIT, default_cache_dir
from cytotune.data.cache import CACHE_LAYOUT
from cytotune.data.manifest import Manifest, find_manifest, scan_dataset
from cytotune.data.registry import get_dataset
from cytotune.errors import CytotuneError


def parse_split(text: str) -> tuple[float, float, float]:
    """'0.7,0.1,0.2' -> (0.7, 0.1, 0.2)."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise CytotuneError(f"--split {text!r} is invalid: expected three fractions such as 0.7,0.1,0.2")
    return values  # type: ignore[return-value]


def manifest_summary(manifest: Manifest) -> str:
    """Images per class and split, with where the manifest is and how it was split."""
    how = (
        "official split" if manifest.split is None else "split " + "/".join(f"{f:g}" for f in manifest.split)
    )
    if manifest.split is not None:
        how += f" (seed {manifest.split_seed})"
    level = f", level {manifest.level}" if get_dataset(manifest.dataset).uses_level else ""
    table = manifest.counts()
    table.loc["total"] = table.sum()
    table = table.rename_axis(None)
    lines = [
        f"{manifest.dataset}{level}: {len(manifest)} images in {len(manifest.classes)} classes, {how}, "
        f"digest {manifest.digest[:12]}",
        f"manifest: {manifest.path}",
        table.to_string(),
    ]
    if manifest.dropped:
        lines.append(
            f"dropped {len(manifest.dropped)} unreadable or missing images: {', '.join(manifest.dropped)}"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class _Survey:
    """What is at a dataset's root: its layout, images found per class, images named but missing, the
    loader's notes, and the manifest and this cache layout's image caches when prepared."""

    layout: str
    uses_level: bool
    found: dict[str, int]
    missing: int
    notes: tuple[str, ...]
    manifest: Manifest | None
    caches: list[Path]


def _survey(
    name: str, root: Path, level: int, split: Sequence[float], split_seed: int, cache_dir: Path | None
) -> _Survey:
    spec = get_dataset(name)
    listing = scan_dataset(name, root, level=level)
    found = listing.frame["class_name"].value_counts().reindex(list(listing.classes), fill_value=0)
    manifest = find_manifest(name, root, level=level, split=split, split_seed=split_seed, cache_dir=cache_dir)
    caches = []
    if manifest is not None:
        cache_base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        pattern = (
            f"{name}-{manifest.digest[:16]}-*-v{CACHE_LAYOUT}.u8"  # this layout's training and eval views
        )
        caches = sorted((cache_base / "images").glob(pattern))
    return _Survey(
        layout=spec.layout,
        uses_level=spec.uses_level,
        found={class_name: int(count) for class_name, count in found.items()},
        missing=len(listing.missing),
        notes=tuple(listing.notes),
        manifest=manifest,
        caches=caches,
    )


def dataset_info(
    name: str,
    root: Path,
    *,
    level: int = 3,
    split: Sequence[float] = DEFAULT_SPLIT,
    split_seed: int = 0,
    cache_dir: Path | None = None,
) -> str:
    """What is at `root` for dataset `name`: classes and images found, and manifest and caches if made."""
    survey = _survey(name, root, level, split, split_seed, cache_dir)
    lines = [f"{name} at {Path(root).resolve()}; layout: {survey.layout}"]
    lines += [f"  {class_name}: {count} images" for class_name, count in survey.found.items()]
    if survey.missing:
        lines.append(f"  {survey.missing} images named but not found")
    lines += [f"  {note}" for note in survey.notes]
    if survey.manifest is None:
        lines.append(f"not prepared (or changed since): run `cytotune data prepare {name} --root {root}`")
        return "\n".join(lines)
    lines.append(manifest_summary(survey.manifest))
    lines += [f"image cache: {path}" for path in survey.caches] or ["image cache: none yet"]
    return "\n".join(lines)


def dataset_facts(
    name: str,
    root: Path,
    *,
    level: int = 3,
    split: Sequence[float] = DEFAULT_SPLIT,
    split_seed: int = 0,
    cache_dir: Path | None = None,
) -> dict:
    """`dataset_info` as plain data (`data info --json`): images found per class, and the manifest (images per
    class and split, digest) and image caches when prepared (null and [] otherwise)."""
    survey = _survey(name, root, level, split, split_seed, cache_dir)
    manifest = survey.manifest
    facts = {
        "dataset": name,
        "root": str(Path(root).resolve()),
        "layout": survey.layout,
        "level": level if survey.uses_level else None,
        "classes": survey.found,
        "missing": survey.missing,
        "notes": list(survey.notes),
        "manifest": None,
        "image_caches": [str(path) for path in survey.caches],
    }
    if manifest is None:
        return facts
    counts = manifest.counts()
    facts["manifest"] = {
        "path": str(manifest.path),
        "digest": manifest.digest,
        "images": len(manifest),
        "split": "official" if manifest.split is None else list(manifest.split),
        "split_seed": None if manifest.split is None else manifest.split_seed,
        "counts": {c: {k: int(v) for k, v in row.items()} for c, row in counts.iterrows()},
        "dropped": list(manifest.dropped),
    }
    return facts
