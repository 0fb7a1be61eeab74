"""Small builders of native-layout data sets for the data tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_cityscapes(
    root: Path, split: str, items: dict[str, tuple[np.ndarray, np.ndarray]], city: str = "aachen"
) -> dict[str, tuple[Path, Path]]:
    """Write {stem: (HxWx3 uint8 image, HxW uint8 labelIds)}; returns {stem: (image, mask)}."""
    paths = {}
    img_dir = root / "leftImg8bit" / split / city
    mask_dir = root / "gtFine" / split / city
    img_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    for stem, (img, lab) in items.items():
        ip = img_dir / f"{stem}_leftImg8bit.png"
        mp = mask_dir / f"{stem}_gtFine_labelIds.png"
        Image.fromarray(img).save(ip)
        Image.fromarray(lab).save(mp)
        paths[stem] = (ip, mp)
    return paths


def write_bdd(
    root: Path, split: str, items: dict[str, tuple[np.ndarray, np.ndarray]]
) -> dict[str, tuple[Path, Path]]:
    """Write {stem: (image, trainId mask)} in the BDD100K layout; returns {stem: (image, mask)}."""
    paths = {}
    img_dir = root / "images" / "10k" / split
    mask_dir = root / "labels" / "sem_seg" / "masks" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    for stem, (img, lab) in items.items():
        ip, mp = img_dir / f"{stem}.jpg", mask_dir / f"{stem}.png"
        Image.fromarray(img).save(ip, quality=95)
        Image.fromarray(lab).save(mp)
        paths[stem] = (ip, mp)
    return paths


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
