"""Loaders for the published cytology datasets, user folders and synthetic data (registered on import)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from cytotune.data.images import IMAGE_EXTENSIONS, is_image_file
from cytotune.data.registry import DatasetListing, register_dataset
from cytotune.errors import CytotuneError

SIPAKMED_CLASSES = ("Dyskeratotic", "Koilocytotic", "Metaplastic", "Parabasal", "Superficial-Intermediate")
MLCC_CLASSES = ("NILM", "LSIL", "HSIL", "SCC")
BCFC_CLASSES = ("benign", "malignant")
HICERVIX_SPLITS = ("train", "val", "test")
HICERVIX_COLUMNS = ("image_name", "level_1", "level_2", "level_3")
SYNTHETIC_MARKER = "cytotune_synthetic.json"
_NO_LABEL = ["", "nan", "NaN", "None", "null"]
_FORMATS = "/".join(sorted(ext.lstrip(".") for ext in IMAGE_EXTENSIONS))


def _normalised(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_under(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if is_image_file(p) and p.is_file() and ".cytotune" not in p.parts
    )


def _found(folder: Path, limit: int = 8) -> str:
    entries = sorted(
        p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if not p.name.startswith(".")
    )
    if not entries:
        return "found an empty folder"
    more = f" and {len(entries) - limit} more" if len(entries) > limit else ""
    return "found " + ", ".join(entries[:limit]) + more


def _unwrapped(root: Path, matches: Callable[[Path], bool]) -> Path:
    """The root, or its only sub-folder when the layout sits one level down (as archives often unpack)."""
    if matches(root):
        return root
    subdirs = _subdirs(root)
    if len(subdirs) == 1 and matches(subdirs[0]):
        return subdirs[0]
    return root


def _class_frame(root: Path, folders: dict[str, Path], classes: tuple[str, ...]) -> pd.DataFrame:
    rows = []
    for class_name in classes:
        folder = folders[class_name]
        images = _images_under(folder)
        if not images:
            raise CytotuneError(
                f"class folder {folder} is empty: expected {class_name} images ({_FORMATS}); {_found(folder)}"
            )
        rows += [(p.relative_to(root).as_posix(), class_name) for p in images]
    return pd.DataFrame(rows, columns=["path", "class_name"]).assign(split=None)


def _folders_by_class(
    root: Path, dataset: str, classes: tuple[str, ...], class_of: Callable[[str], str | None], expected: str
) -> dict[str, Path]:
    folders: dict[str, Path] = {}
    for folder in _subdirs(root):
        class_name = class_of(folder.name)
        if class_name is None:
            continue
        if class_name in folders:
            raise CytotuneError(
                f"{dataset}: folders {folders[class_name].name!r} and {folder.name!r} in {root} are both "
                f"class "
                f"{class_name}: expected one folder per class"
            )
        folders[class_name] = folder
    missing = [c for c in classes if c not in folders]
    if missing:
        raise CytotuneError(
            f"{dataset} layout not found in {root}: expected {expected}; "
            f"missing {', '.join(missing)}; {_found(root)}"
        )
    return folders


def _sipakmed_class(name: str) -> str | None:
    bare = name[3:] if name.lower().startswith("im_") else name
    by_key = {_normalised(c): c for c in SIPAKMED_CLASSES}
    return by_key.get(_normalised(bare))


def _sipakmed_images_folder(folder: Path) -> Path:
    if not folder.name.lower().startswith("im_"):
        return folder
    for candidate in (folder, *_subdirs(folder)):
        cropped = [d for d in _subdirs(candidate) if d.name.lower() == "cropped"]
        if cropped:
            return cropped[0]
    raise CytotuneError(f"sipakmed: {folder} has no CROPPED folder: expected {folder.name}/CROPPED/*.bmp")


@register_dataset("sipakmed", layout="im_<Class>/CROPPED/*.bmp (or <Class>/*.bmp) for the 5 SIPaKMeD classes")
def load_sipakmed(root: Path, level: int) -> DatasetListing:
    """SIPaKMeD as published: `im_<Class>/CROPPED/*.bmp` (also `<Class>/*.bmp`), five classes."""
    root_found = _unwrapped(root, lambda r: any(_sipakmed_class(d.name) for d in _subdirs(r)))
    expected = "im_<Class>/CROPPED/*.bmp or <Class>/*.bmp for " + ", ".join(SIPAKMED_CLASSES)
    folders = _folders_by_class(root_found, "sipakmed", SIPAKMED_CLASSES, _sipakmed_class, expected)
    folders = {c: _sipakmed_images_folder(f) for c, f in folders.items()}
    return DatasetListing(SIPAKMED_CLASSES, _class_frame(root, folders, SIPAKMED_CLASSES))


def _mlcc_class(name: str) -> str | None:
    key = _normalised(name)
    if key == "nilm" or key.startswith("negative"):
        return "NILM"
    if key == "lsil" or key.startswith("low"):
        return "LSIL"
    if key == "hsil" or key.startswith("high"):
        return "HSIL"
    if key == "scc" or "carcinoma" in key:
        return "SCC"
    return None


@register_dataset("mlcc", layout="one folder per Bethesda class: NILM, LSIL, HSIL, SCC (short or long names)")
def load_mlcc(root: Path, level: int) -> DatasetListing:
    """Mendeley LBC (MLCC): one folder per class, long published Bethesda names or short ones."""
    root_found = _unwrapped(root, lambda r: any(_mlcc_class(d.name) for d in _subdirs(r)))
    expected = (
        "folders NILM, LSIL, HSIL, SCC or their long names (Negative for Intraepithelial malignancy, "
        "Low squamous intra-epithelial lesion, High squamous intra-epithelial lesion, "
        "Squamous cell carcinoma)"
    )
    folders = _folders_by_class(root_found, "mlcc", MLCC_CLASSES, _mlcc_class, expected)
    return DatasetListing(MLCC_CLASSES, _class_frame(root, folders, MLCC_CLASSES))


@register_dataset("bcfc", layout="benign/ and malignant/ folders")
def load_bcfc(root: Path, level: int) -> DatasetListing:
    """Body Cavity Fluid Cytology: benign/ and malignant/ folders."""
    by_key = {c: c for c in BCFC_CLASSES}
    root_found = _unwrapped(root, lambda r: any(_normalised(d.name) in by_key for d in _subdirs(r)))
    folders = _folders_by_class(
        root_found,
        "bcfc",
        BCFC_CLASSES,
        lambda n: by_key.get(_normalised(n)),
        "folders benign/ and malignant/",
    )
    return DatasetListing(BCFC_CLASSES, _class_frame(root, folders, BCFC_CLASSES))


def _hicervix_csv_dir(root: Path) -> Path:
    if (root / "train.csv").is_file():
        return root
    candidates = sorted(p.parent for p in root.glob("*/train.csv")) + sorted(
        p.parent for p in root.glob("*/*/train.csv")
    )
    if candidates:
        return candidates[0]
    raise CytotuneError(
        f"hicervix layout not found in {root}: expected train.csv, val.csv, test.csv and image folders; "
        f"{_found(root)}"
    )


def _hicervix_labels(table: pd.DataFrame, level: int) -> pd.Series:
    levels = {n: table[f"level_{n}"].astype("string").str.strip() for n in (1, 2, 3)}
    levels = {n: column.replace(_NO_LABEL, pd.NA) for n, column in levels.items()}
    if level == 3:
        return levels[3].fillna(levels[2])
    return levels[level]


@register_dataset(
    "hicervix",
    layout="train.csv, val.csv, test.csv (image_name, class_name, class_id, level_1, level_2, level_3) "
    "+ image folders",
    official_split=True,
    uses_level=True,
)
def load_hicervix(root: Path, level: int) -> DatasetListing:
    """HiCervix: official train/val/test CSVs; label at level 1, 2 or 3 (level 3 = level_3 else level_2)."""
    csv_dir = _hicervix_csv_dir(root)
    by_name: dict[str, list[Path]] = {}
    for image in _images_under(csv_dir):
        by_name.setdefault(image.name, []).append(image)
    rows, missing, notes, sources = [], [], [], []
    for split in HICERVIX_SPLITS:
        csv_path = csv_dir / f"{split}.csv"
        if not csv_path.is_file():
            raise CytotuneError(
                f"hicervix: {csv_path} is missing: expected train.csv, val.csv and test.csv together"
            )
        sources.append(csv_path.relative_to(root).as_posix())
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
        absent = [c for c in HICERVIX_COLUMNS if c not in table.columns]
        if absent:
            raise CytotuneError(
                f"hicervix: {csv_path} lacks columns {', '.join(absent)}: expected image_name, class_name, "
                "class_id, "
                f"level_1, level_2, level_3; found {', '.join(table.columns)}"
            )
        labels = _hicervix_labels(table, level)
        unlabelled = int(labels.isna().sum())
        if unlabelled:
            notes.append(f"{split}.csv: {unlabelled} rows without a level-{level} label dropped")
        for name, label in zip(table["image_name"], labels, strict=True):
            if pd.isna(label):
                continue
            image = _hicervix_image(csv_dir, name, split, by_name)
            if image is None:
                missing.append(f"{split}.csv:{name}")
                continue
            rows.append((image.relative_to(root).as_posix(), str(label), split))
    frame = pd.DataFrame(rows, columns=["path", "class_name", "split"])
    classes = tuple(sorted(frame["class_name"].unique()))
    return DatasetListing(classes, frame, missing=tuple(missing), sources=tuple(sources), notes=tuple(notes))


def _hicervix_image(csv_dir: Path, name: str, split: str, by_name: dict[str, list[Path]]) -> Path | None:
    direct = csv_dir / name
    if "/" in name and direct.is_file():
        return direct
    candidates = by_name.get(Path(name).name, [])
    if len(candidates) > 1:
        in_split = [p for p in candidates if split in p.relative_to(csv_dir).parts[:-1]]
        if len(in_split) == 1:
            return in_split[0]
        listed = ", ".join(str(p) for p in candidates)
        raise CytotuneError(f"hicervix: image {name!r} of {split}.csv is ambiguous: found {listed}")
    return candidates[0] if candidates else None


@register_dataset("folder", layout="one sub-folder per class, images inside")
def load_folder(root: Path, level: int) -> DatasetListing:
    """Any root with one sub-folder per class (user data); classes sorted by name."""
    subdirs = _subdirs(root)
    if not subdirs:
        raise CytotuneError(
            f"folder layout not found in {root}: expected one sub-folder per class with images; "
            f"{_found(root)}"
        )
    classes = tuple(d.name for d in subdirs)
    return DatasetListing(classes, _class_frame(root, {d.name: d for d in subdirs}, classes))


@register_dataset(
    "synthetic", layout=f"the folder written by `cytotune data synth` (with {SYNTHETIC_MARKER})"
)
def load_synthetic(root: Path, level: int) -> DatasetListing:
    """A synthetic dataset written by `generate_synthetic`: its class folders in the generator's order."""
    marker = root / SYNTHETIC_MARKER
    if not marker.is_file():
        raise CytotuneError(
            f"synthetic layout not found in {root}: expected {SYNTHETIC_MARKER} and class folders written by "
            f"`cytotune data synth`; {_found(root)}"
        )
    classes = tuple(json.loads(marker.read_text())["classes"])
    folders = {c: root / c for c in classes}
    for folder in folders.values():
        if not folder.is_dir():
            raise CytotuneError(f"synthetic: class folder {folder} is missing: expected one folder per class")
    return DatasetListing(classes, _class_frame(root, folders, classes))
