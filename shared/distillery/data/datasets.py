"""Cityscapes and BDD100K semantic segmentation, each read in its own native layout.

Cityscapes::

    root/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png
    root/gtFine/{split}/{city}/{stem}_gtFine_labelIds.png      labelIds 0..33 -> 19 trainIds

BDD100K (sem_seg, 10k images)::

    root/images/10k/{split}/{stem}.jpg
    root/labels/sem_seg/masks/{split}/{stem}.png               already trainIds, 255 = ignore

Every item is ``{"image": float32 3xHxW normalised, "mask": int64 HxW (0..18, 255),
"name": stem}``. Each item's augmentation draws from its own ``torch.Generator`` seeded from
``(seed, epoch, index, stream, visit)`` where ``stream`` is the DataLoader's per-epoch base seed
inside a worker (0 in the main process) and ``visit`` counts how often this process has served
the index. So it is deterministic given the seed, the DataLoader's generator and the order of
requests, and differs between epochs even if ``set_epoch`` is never called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, get_worker_info

from distillery.archive_safety import MAX_IMAGE_PIXELS
from distillery.data.errors import DatasetError
from distillery.data.labels import (
    IGNORE_INDEX,
    KNOWN_LABEL_IDS,
    LABEL_ID_TO_TRAIN_ID,
    NUM_CLASSES,
)
from distillery.data.seeding import derive_seed
from distillery.data.teacher_maps import TeacherMaps
from distillery.data.transforms import Normalize, SegTransform
from distillery.registry import Registry

#: Data set format name -> class. A spec's `DatasetRef.format` names one of these.
DATASETS: Registry[type[SegmentationDataset]] = Registry("dataset")


@dataclass(frozen=True)
class Sample:
    """One image and its mask on disk."""

    image: Path
    mask: Path
    name: str


def _lut(values: frozenset[int] | set[int]) -> np.ndarray:
    lut = np.zeros(256, dtype=bool)
    lut[sorted(values)] = True
    return lut


def _check_pixels(im: Image.Image, path: Path) -> None:
    """Refuse an image whose header declares more than `MAX_IMAGE_PIXELS`, before decoding."""
    w, h = im.size
    if w * h > MAX_IMAGE_PIXELS:
        raise DatasetError(
            f"{path}: {w}x{h} pixels, more than the limit of {MAX_IMAGE_PIXELS} (8192x8192)"
        )


def read_image(path: Path) -> np.ndarray:
    """An RGB image as HxWx3 uint8; a file PIL cannot fully decode raises `DatasetError`."""
    try:
        with Image.open(path) as im:
            _check_pixels(im, path)
            im.load()
            rgb = im.convert("RGB")
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file is missing") from None
    except DatasetError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"{path}: corrupt or unreadable image ({e})") from None
    return np.array(rgb)  # writable, so torch.from_numpy can share it


def read_mask_raw(path: Path) -> np.ndarray:
    """A single-channel 8-bit PNG mask as HxW uint8 (palette images give their indices)."""
    try:
        with Image.open(path) as im:
            _check_pixels(im, path)
            im.load()
            mode = im.mode
            arr = np.array(im)
    except FileNotFoundError:
        raise DatasetError(f"{path}: mask file is missing") from None
    except DatasetError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"{path}: corrupt or unreadable mask ({e})") from None
    if arr.ndim != 2:
        raise DatasetError(f"{path}: a mask must have one channel, got PIL mode {mode!r}")
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            bad = np.unique(arr[(arr < 0) | (arr > 255)])[:10].tolist()
            raise DatasetError(f"{path}: unknown label value(s) {bad}")
        arr = arr.astype(np.uint8)
    return arr


def check_values(raw: np.ndarray, valid: np.ndarray, path: Path, what: str) -> np.ndarray:
    """Per-value pixel counts (256) of `raw`; raises naming `path` if any value is not valid."""
    counts = np.bincount(raw.ravel(), minlength=256)
    bad = np.flatnonzero((counts > 0) & ~valid)
    if bad.size:
        raise DatasetError(f"{path}: unknown label value(s) {bad[:10].tolist()} (expected {what})")
    return counts


class SegmentationDataset(Dataset):
    """Base class: finds (image, mask) pairs, reads and checks them, applies a transform.

    Subclasses define `format`, `_find_samples` and `decode_mask` (raw mask -> trainIds).
    """

    format: ClassVar[str]

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: SegTransform | Callable | None = None,
        seed: int = 0,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transform = transform if transform is not None else Normalize()
        self.seed = int(seed)
        self.epoch = 0
        self.samples: list[Sample] = self._find_samples()
        self._visits = np.zeros(len(self.samples), dtype=np.int64)
        #: A teacher cache's maps of this data set: items then carry ``teacher_logits``.
        self.teacher_maps: TeacherMaps | None = None

    # -- layout ------------------------------------------------------------------------------

    def _find_samples(self) -> list[Sample]:
        raise NotImplementedError

    def decode_mask(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Raw mask values -> HxW uint8 trainIds (0..18, 255); raises on unknown values."""
        raise NotImplementedError

    @staticmethod
    def _pair(
        images: list[Path],
        mask_for: Callable[[Path], Path],
        name_for: Callable[[Path], str],
        masks_found: list[Path],
        split_dir: Path,
        pattern: str,
    ) -> list[Sample]:
        if not images:
            raise DatasetError(f"{split_dir}: empty split, no images matching {pattern}")
        samples = [Sample(p, mask_for(p), name_for(p)) for p in images]
        expected = {s.mask for s in samples}
        for s in samples:
            if not s.mask.is_file():
                raise DatasetError(f"{s.image}: no mask for this image (expected {s.mask})")
        for m in masks_found:
            if m not in expected:
                raise DatasetError(f"{m}: mask without an image")
        return samples

    # -- reading -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.samples)

    def _index(self, index: int) -> int:
        n = len(self.samples)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        return index % n

    def load_image(self, index: int) -> np.ndarray:
        """HxWx3 uint8 RGB, as stored."""
        return read_image(self.samples[self._index(index)].image)

    def load_mask(self, index: int) -> np.ndarray:
        """HxW uint8 trainIds (0..18, 255) at the stored size; unknown values raise."""
        path = self.samples[self._index(index)].mask
        return self.decode_mask(read_mask_raw(path), path)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image, trainId mask) as stored, checked for matching size and label values."""
        image, mask = self.load_image(index), self.load_mask(index)
        if image.shape[:2] != mask.shape:
            s = self.samples[self._index(index)]
            raise DatasetError(
                f"{s.mask}: mask size {mask.shape[1]}x{mask.shape[0]} (WxH) differs from its "
                f"image {s.image} ({image.shape[1]}x{image.shape[0]})"
            )
        return image, mask

    # -- torch Dataset -----------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Mix the epoch into every item's augmentation seed (like DistributedSampler) and
        restart the visit counts, so an epoch's augmentation does not depend on earlier epochs
        (a run resumed at epoch n draws what an unbroken run draws)."""
        self.epoch = int(epoch)
        self._visits[:] = 0

    def generator(self, index: int) -> torch.Generator:
        """The generator item `index` draws its augmentation from (counts one more visit)."""
        index = self._index(index)
        info = get_worker_info()
        stream = 0 if info is None else info.seed - info.id  # the loader's per-epoch base seed
        visit = int(self._visits[index])
        self._visits[index] += 1
        seed = derive_seed(self.seed, self.epoch, index, stream, visit)
        return torch.Generator().manual_seed(seed)

    def use_teacher_maps(self, maps: TeacherMaps | None) -> None:
        """Give every item ``teacher_logits`` (fp16 CxHxW, cut like its crop) from `maps`
        (None: stop). The transform must tell its crop geometry (`TrainTransform`)."""
        if maps is not None:
            if not (hasattr(self.transform, "apply") and hasattr(self.transform, "cut")):
                raise TypeError(
                    f"{self!r}: a teacher cache needs the training transform (crop geometry), "
                    f"got {type(self.transform).__name__}"
                )
            if maps.count != len(self):
                raise ValueError(f"{maps!r} does not match {self!r}")
        self.teacher_maps = maps

    def __getitem__(self, index: int) -> dict:
        index = self._index(index)
        image, mask = self.load(index)
        g = self.generator(index) if getattr(self.transform, "random", True) else None
        img_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        mask_t = torch.from_numpy(mask.astype(np.int64))
        item: dict = {"name": self.samples[index].name}
        if self.teacher_maps is None:
            img_t, mask_t = self.transform(img_t, mask_t, g)
        else:
            img_t, mask_t, geometry = self.transform.apply(img_t, mask_t, g)  # type: ignore[union-attr]
            maps = self.teacher_maps.load(index)[int(geometry.flip)]
            item["teacher_logits"] = self.transform.cut(maps, geometry).half()  # type: ignore[union-attr]
        return {"image": img_t, "mask": mask_t, **item}

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"


@DATASETS.register("cityscapes")
class CityscapesDataset(SegmentationDataset):
    """Cityscapes fine annotations; labelIds are mapped to the 19 trainIds by the official table."""

    format = "cityscapes"
    IMAGE_SUFFIX = "_leftImg8bit.png"
    MASK_SUFFIX = "_gtFine_labelIds.png"
    VALID_RAW = _lut(KNOWN_LABEL_IDS)

    def _find_samples(self) -> list[Sample]:
        img_dir = self.root / "leftImg8bit" / self.split
        mask_dir = self.root / "gtFine" / self.split
        if not img_dir.is_dir():
            raise DatasetError(f"{img_dir}: split folder not found (Cityscapes layout)")
        pattern = f"*/*{self.IMAGE_SUFFIX}"
        images = sorted(img_dir.glob(pattern))
        masks = sorted(mask_dir.glob(f"*/*{self.MASK_SUFFIX}")) if mask_dir.is_dir() else []

        def stem(p: Path) -> str:
            return p.name[: -len(self.IMAGE_SUFFIX)]

        def mask_for(p: Path) -> Path:
            return mask_dir / p.parent.name / f"{stem(p)}{self.MASK_SUFFIX}"

        return self._pair(images, mask_for, stem, masks, img_dir, pattern)

    def decode_mask(self, raw: np.ndarray, path: Path) -> np.ndarray:
        check_values(raw, self.VALID_RAW, path, "Cityscapes labelIds 0..33")
        return LABEL_ID_TO_TRAIN_ID[raw]


@DATASETS.register("bdd100k")
class BDD100KDataset(SegmentationDataset):
    """BDD100K sem_seg (10k images); masks already hold trainIds with 255 = ignore."""

    format = "bdd100k"
    VALID_RAW = _lut(set(range(NUM_CLASSES)) | {IGNORE_INDEX})

    def _find_samples(self) -> list[Sample]:
        img_dir = self.root / "images" / "10k" / self.split
        mask_dir = self.root / "labels" / "sem_seg" / "masks" / self.split
        if not img_dir.is_dir():
            raise DatasetError(f"{img_dir}: split folder not found (BDD100K layout)")
        images = sorted(img_dir.glob("*.jpg"))
        masks = sorted(mask_dir.glob("*.png")) if mask_dir.is_dir() else []
        return self._pair(
            images, lambda p: mask_dir / f"{p.stem}.png", lambda p: p.stem, masks, img_dir, "*.jpg"
        )

    def decode_mask(self, raw: np.ndarray, path: Path) -> np.ndarray:
        check_values(raw, self.VALID_RAW, path, "BDD100K trainIds 0..18 or 255")
        return raw
