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
class DatasetSurvey:
    """What is at a dataset's root (`cytotune data info`): its layout, images found per class, images named
    but missing, the loader's notes, and the manifest and this cache layout's image caches when prepared."""

    name: str
    root: Path | str  # as given
    level: int | None
    layout: str
    found: dict[str, int]
    missing: int
    notes: tuple[str, ...]
    manifest: Manifest | None
    caches: list[Path]

    def text(self) -> str:
        """Classes and images found, and the manifest and caches if made, as printable lines."""
        lines = [f"{self.name} at {Path(self.root).resolve()}; layout: {self.layout}"]
        lines += [f"  {class_name}: {count} images" for class_name, count in self.found.items()]
        if self.missing:
            lines.append(f"  {self.missing} images named but not found")
        lines += [f"  {note}" for note in self.notes]
        if self.manifest is None:
            lines.append(
                f"not prepared (or changed since): run `cytotune data prepare {self.name} --root {self.root}`"
            )
            return "\n".join(lines)
        lines.append(manifest_summary(self.manifest))
        lines += [f"image cache: {path}" for path in self.caches] or ["image cache: none yet"]
        return "\n".join(lines)

    def facts(self) -> dict:
        """The survey as plain data (`data info --json`): images found per class, and the manifest (images
        per class and split, digest) and image caches when prepared (null and [] otherwise)."""
        manifest = self.manifest
        facts = {
            "dataset": self.name,
            "root": str(Path(self.root).resolve()),
            "layout": self.layout,
            "level": self.level,
            "classes": self.found,
            "missing": self.missing,
            "notes": list(self.notes),
            "manifest": None,
            "image_caches": [str(path) for path in self.caches],
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


def survey_dataset(
    name: str,
    root: Path | str,
    *,
    level: int = 3,
    split: Sequence[float] = DEFAULT_SPLIT,
    split_seed: int = 0,
    cache_dir: Path | str | None = None,
) -> DatasetSurvey:
    """What is at `root` for dataset `name`, without preparing anything."""
    spec = get_dataset(name)
    listing = scan_dataset(name, root, level=level)
    found = listing.frame["class_name"].value_counts().reindex(list(listing.classes), fill_value=0)
    manifest = find_manifest(name, root, level=level, split=split, split_seed=split_seed, cache_dir=cache_dir)
    caches = []
    if manifest is not None:
        cache_base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        pattern = f"{name}-{manifest.digest[:16]}-*-v{CACHE_LAYOUT}.u8"  # this layout's train and eval views
        caches = sorted((cache_base / "images").glob(pattern))
    return DatasetSurvey(
        name=name,
        root=root,
        level=level if spec.uses_level else None,
        layout=spec.layout,
        found={class_name: int(count) for class_name, count in found.items()},
        missing=len(listing.missing),
        notes=tuple(listing.notes),
        manifest=manifest,
        caches=caches,
    )
