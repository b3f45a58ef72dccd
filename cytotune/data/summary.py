"""Plain-text summaries of datasets and manifests, as the command line prints them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cytotune.config import default_cache_dir
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


def dataset_info(
    name: str,
    root: Path,
    *,
    level: int = 3,
    split: Sequence[float] = (0.7, 0.1, 0.2),
    split_seed: int = 0,
    cache_dir: Path | None = None,
) -> str:
    """What is at `root` for dataset `name`: classes and images found, and manifest and caches if made."""
    spec = get_dataset(name)
    listing = scan_dataset(name, root, level=level)
    found = listing.frame["class_name"].value_counts().reindex(list(listing.classes), fill_value=0)
    lines = [f"{name} at {Path(root).resolve()}; layout: {spec.layout}"]
    lines += [f"  {class_name}: {count} images" for class_name, count in found.items()]
    if listing.missing:
        lines.append(f"  {len(listing.missing)} images named but not found")
    lines += [f"  {note}" for note in listing.notes]
    manifest = find_manifest(name, root, level=level, split=split, split_seed=split_seed, cache_dir=cache_dir)
    if manifest is None:
        lines.append(f"not prepared (or changed since): run `cytotune data prepare {name} --root {root}`")
        return "\n".join(lines)
    lines.append(manifest_summary(manifest))
    cache_base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    pattern = f"{name}-{manifest.digest[:16]}-*-v{CACHE_LAYOUT}.u8"  # this layout's training and eval views
    caches = sorted((cache_base / "images").glob(pattern))
    lines += [f"image cache: {path}" for path in caches] or ["image cache: none yet"]
    return "\n".join(lines)


def dataset_facts(
    name: str,
    root: Path,
    *,
    level: int = 3,
    split: Sequence[float] = (0.7, 0.1, 0.2),
    split_seed: int = 0,
    cache_dir: Path | None = None,
) -> dict:
    """`dataset_info` as plain data (`data info --json`): images found per class, and the manifest (images per
    class and split, digest) and image caches when prepared (null and [] otherwise)."""
    spec = get_dataset(name)
    listing = scan_dataset(name, root, level=level)
    found = listing.frame["class_name"].value_counts().reindex(list(listing.classes), fill_value=0)
    facts = {
        "dataset": name,
        "root": str(Path(root).resolve()),
        "layout": spec.layout,
        "level": level if spec.uses_level else None,
        "classes": {class_name: int(count) for class_name, count in found.items()},
        "missing": len(listing.missing),
        "notes": list(listing.notes),
        "manifest": None,
        "image_caches": [],
    }
    manifest = find_manifest(name, root, level=level, split=split, split_seed=split_seed, cache_dir=cache_dir)
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
    cache_base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    caches = sorted((cache_base / "images").glob(f"{name}-{manifest.digest[:16]}-*.u8"))
    facts["image_caches"] = [str(path) for path in caches]
    return facts
