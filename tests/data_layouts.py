"""Builders of the published dataset layouts, in tmp folders, with small generated images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

MLCC_LONG = {
    "NILM": "Negative for Intraepithelial malignancy",
    "LSIL": "Low squamous intra-epithelial lesion",
    "HSIL": "High squamous intra-epithelial lesion",
    "SCC": "Squamous cell carcinoma",
}
SIPAKMED = ("Dyskeratotic", "Koilocytotic", "Metaplastic", "Parabasal", "Superficial-Intermediate")


def write_image(path: Path, seed: int, size: tuple[int, int] = (40, 30), mode: str = "RGB") -> Path:
    """A random image (unique content per seed) in the format of the path's extension."""
    rng = np.random.default_rng(seed)
    width, height = size
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if mode == "L":
        image = image.convert("L")
    elif mode == "RGBA":
        image = image.convert("RGBA")
    elif mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE)
    elif mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def make_sipakmed(root: Path, per_class: int = 6, published: bool = True) -> Path:
    """SIPaKMeD: im_<Class>/CROPPED/*.bmp with full-slide .bmp and .dat files beside (or <Class>/*.bmp)."""
    for c, name in enumerate(SIPAKMED):
        if published:
            folder = root / f"im_{name}" / "CROPPED"
            write_image(root / f"im_{name}" / "001.bmp", seed=10_000 + c, size=(64, 48))
            (root / f"im_{name}" / "001_cyt01.dat").write_text("1,2\n")
        else:
            folder = root / name
        for i in range(per_class):
            write_image(folder / f"{i + 1:03d}_0{i % 3 + 1}.bmp", seed=100 * c + i)
    return root


def make_mlcc(root: Path, per_class: int = 6, long_names: bool = True) -> Path:
    """MLCC: one folder per Bethesda class, long published names or short ones, .jpg images."""
    for c, short in enumerate(MLCC_LONG):
        folder = root / (MLCC_LONG[short] if long_names else short)
        for i in range(per_class):
            write_image(folder / f"{short.lower()}_{i}.jpg", seed=200 + 100 * c + i, size=(64, 48))
    return root


def make_bcfc(root: Path, per_class: int = 6) -> Path:
    """BCFC: benign/ and malignant/ folders of .jpg images."""
    for c, name in enumerate(("benign", "malignant")):
        for i in range(per_class):
            write_image(root / name / f"{name}_{i}.jpg", seed=700 + 100 * c + i)
    return root


def make_hicervix(root: Path, rows: dict[str, list[tuple[str, str, str, str]]] | None = None) -> Path:
    """HiCervix: {train,val,test}.csv (image_name, class_name, class_id, level_1, level_2, level_3) and the
    images in train/, val/, test/ folders. `rows[split]` holds (image_name, level_1, level_2, level_3)."""
    if rows is None:
        labels = [
            ("NILM", "", ""),
            ("ASC", "ASC-US", ""),
            ("ASC", "ASC-H", ""),
            ("SIL", "LSIL", "LSIL-koilo"),
            ("SIL", "HSIL", "HSIL-2"),
            ("SIL", "HSIL", "HSIL-3"),
        ]
        rows = {
            split: [(f"{split}_{i:03d}.jpg", *labels[i % len(labels)]) for i in range(n)]
            for split, n in (("train", 18), ("val", 6), ("test", 12))
        }
    seed = 5000
    for split, split_rows in rows.items():
        table = []
        for name, level_1, level_2, level_3 in split_rows:
            seed += 1
            write_image(root / split / name, seed=seed)
            finest = level_3 or level_2 or level_1
            table.append(
                {
                    "image_name": name,
                    "class_name": finest,
                    "class_id": 0,
                    "level_1": level_1,
                    "level_2": level_2,
                    "level_3": level_3,
                }
            )
        pd.DataFrame(table).to_csv(root / f"{split}.csv", index=False)
    return root


def make_folder(root: Path, classes: dict[str, int], ext: str = ".png") -> Path:
    """One sub-folder per class with that many images."""
    for c, (name, count) in enumerate(classes.items()):
        for i in range(count):
            write_image(root / name / f"img_{i}{ext}", seed=9000 + 100 * c + i)
    return root
