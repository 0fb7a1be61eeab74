"""Write the synthetic driving-scene data set in the native Cityscapes and BDD100K layouts.

Scenes come from `distillery.data.synthetic.scene` (see there for what they contain). Each
image is drawn from its own seed ``(seed, format offset, split, index)``, so a data set is
reproducible, the two formats differ (different seeds and camera styles) and growing
`num_train` keeps the first images unchanged.

A generated root holds a marker ``.distillery-synthetic-{format}.json`` written last: a root
with the marker (and the same parameters) is complete; an interrupted generation (no marker, or
a ``.partial`` marker) is redone. A root that already holds images of that layout but no marker
of ours is never overwritten (`DatasetError`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from distillery.data.errors import DatasetError
from distillery.data.labels import LABEL_ID_TO_TRAIN_ID
from distillery.data.synthetic.scene import BDD100K_STYLE, CITYSCAPES_STYLE, render_scene
from distillery.spec import DataSpec

Format = Literal["cityscapes", "bdd100k"]

#: Seed offsets so that the two formats are not copies of each other.
FORMAT_SEED = {"cityscapes": 0x5C17, "bdd100k": 0xBDD1}
STYLES = {"cityscapes": CITYSCAPES_STYLE, "bdd100k": BDD100K_STYLE}
#: Two cities per split, as in Cityscapes (names from the real data set).
CITIES = {
    "train": ("aachen", "bochum"),
    "val": ("frankfurt", "lindau"),
    "test": ("berlin", "bielefeld"),
}
_SPARE_CITIES = ("bremen", "cologne", "darmstadt", "dusseldorf", "erfurt", "hamburg")
GENERATOR_VERSION = 1


def marker_path(root: Path, fmt: str) -> Path:
    return Path(root) / f".distillery-synthetic-{fmt}.json"


def _partial_path(root: Path, fmt: str) -> Path:
    return Path(root) / f".distillery-synthetic-{fmt}.partial"


def split_dirs(root: Path, fmt: str, split: str) -> tuple[Path, Path]:
    """(image folder, mask folder) of one split in the native layout."""
    root = Path(root)
    if fmt == "cityscapes":
        return root / "leftImg8bit" / split, root / "gtFine" / split
    if fmt == "bdd100k":
        return root / "images" / "10k" / split, root / "labels" / "sem_seg" / "masks" / split
    raise ValueError(f"unknown format {fmt!r}; expected cityscapes or bdd100k")


def _cities(split: str, k: int) -> tuple[str, str]:
    if split in CITIES:
        return CITIES[split]
    i = (2 * k) % len(_SPARE_CITIES)
    return _SPARE_CITIES[i], _SPARE_CITIES[i + 1]


def _bdd_name(rng: np.random.Generator, used: set[str]) -> str:
    while True:
        a, b = rng.integers(0, 2**32, size=2)
        name = f"{int(a):08x}-{int(b):08x}"
        if name not in used:
            used.add(name)
            return name


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_file() for p in folder.rglob("*"))


def generate_synthetic(
    root: Path,
    fmt: Format,
    num_train: int,
    num_val: int,
    image_size: tuple[int, int],
    seed: int,
    *,
    splits: tuple[str, str] = ("train", "val"),
) -> None:
    """Render `num_train` + `num_val` scenes of `image_size` (H, W) into `root` in the native
    layout of `fmt`. Cityscapes: PNG images and labelId masks (void ids included, e.g. the ego
    vehicle), file names like ``aachen_000000_000019_leftImg8bit.png``. BDD100K: JPEG images and
    trainId masks (255 = ignore), names like ``0a0a0b1a-7c39d841.jpg``.

    Folders of `splits` that a previous run of this generator left are replaced; folders that
    hold other data are refused with `DatasetError`.
    """
    if fmt not in FORMAT_SEED:
        raise ValueError(f"unknown format {fmt!r}; expected cityscapes or bdd100k")
    h, w = int(image_size[0]), int(image_size[1])
    if h < 8 or w < 8:
        raise ValueError(f"image_size {h}x{w} is too small (at least 8x8)")
    if len(splits) != 2 or splits[0] == splits[1]:
        raise ValueError(f"splits must be two different names, got {splits}")
    if num_train < 1 or num_val < 1:
        raise ValueError(f"num_train and num_val must be >= 1, got {num_train}, {num_val}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    marker, partial = marker_path(root, fmt), _partial_path(root, fmt)
    ours = marker.exists() or partial.exists()
    for split in splits:
        for folder in split_dirs(root, fmt, split):
            if _has_files(folder) and not ours:
                raise DatasetError(
                    f"{folder}: already holds files not written by the synthetic generator; "
                    "refusing to overwrite"
                )
    partial.write_text(json.dumps({"format": fmt}))
    marker.unlink(missing_ok=True)
    for split in splits:
        for folder in split_dirs(root, fmt, split):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)

    style = STYLES[fmt]
    for k, (split, n) in enumerate(zip(splits, (num_train, num_val), strict=True)):
        img_dir, mask_dir = split_dirs(root, fmt, split)
        names: set[str] = set()
        name_rng = np.random.default_rng([seed & 0xFFFFFFFF, FORMAT_SEED[fmt], k, 1 << 20])
        cities = _cities(split, k)
        for i in range(n):
            rng = np.random.default_rng([seed & 0xFFFFFFFF, FORMAT_SEED[fmt], k, i])
            image, label_ids = render_scene(rng, h, w, style)
            if fmt == "cityscapes":
                city = cities[i % 2]
                stem = f"{city}_{i // 2:06d}_000019"
                (img_dir / city).mkdir(exist_ok=True)
                (mask_dir / city).mkdir(exist_ok=True)
                Image.fromarray(image).save(img_dir / city / f"{stem}_leftImg8bit.png")
                Image.fromarray(label_ids).save(mask_dir / city / f"{stem}_gtFine_labelIds.png")
            else:
                stem = _bdd_name(name_rng, names)
                Image.fromarray(image).save(img_dir / f"{stem}.jpg", quality=90)
                Image.fromarray(LABEL_ID_TO_TRAIN_ID[label_ids]).save(mask_dir / f"{stem}.png")
    params = {
        "format": fmt,
        "splits": list(splits),
        "num": [num_train, num_val],
        "image_size": [h, w],
        "seed": seed,
        "version": GENERATOR_VERSION,
    }
    marker.write_text(json.dumps(params, indent=1))  # written last: the data set is complete
    partial.unlink(missing_ok=True)


def is_complete(root: Path, fmt: str, params: dict | None = None) -> bool:
    """True if `root` holds a finished generation of `fmt` (with these parameters, if given)."""
    marker = marker_path(root, fmt)
    if not marker.is_file():
        return False
    if params is None:
        return True
    try:
        found = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return all(found.get(k) == v for k, v in params.items())


@contextlib.contextmanager
def _locked(root: Path, fmt: str) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".distillery-synthetic-{fmt}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_synthetic(spec: DataSpec) -> None:
    """If `spec.synthetic` is set, generate the synthetic data set into every local root of
    `spec.train` and `spec.val` (deduplicated by (root, format)) that does not yet hold a
    complete one with the same parameters. Refs given by `dataset_id` are left alone. Safe to
    call from several processes at once (a file lock serialises them)."""
    syn = spec.synthetic
    if syn is None:
        return
    seen: set[tuple[Path, str]] = set()
    for ref in [*spec.train, *spec.val]:
        if ref.root is None:
            continue
        key = (Path(ref.root).resolve(), ref.format)
        if key in seen:
            continue
        seen.add(key)
        root, fmt = key
        params = {
            "splits": [spec.train_split, spec.val_split],
            "num": [syn.num_train, syn.num_val],
            "image_size": list(syn.image_size),
            "seed": syn.seed,
            "version": GENERATOR_VERSION,
        }
        if is_complete(root, fmt, params):
            continue
        with _locked(root, fmt):
            if not is_complete(root, fmt, params):
                generate_synthetic(
                    root,
                    fmt,
                    syn.num_train,
                    syn.num_val,
                    syn.image_size,
                    syn.seed,
                    splits=(spec.train_split, spec.val_split),
                )
