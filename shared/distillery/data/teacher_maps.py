"""Reading a teacher cache: one data set's precomputed teacher logits, one file per image.

A teacher cache (written by `distillery.training.teacher_cache`) holds, for every training image,
the frozen teacher's logits on the image at the augmentation's base framing (scaled to just cover
the crop size, no jitter), as an fp16 array ``(2, C, h, w)``: ``[0]`` of the image, ``[1]`` of
its mirror image mirrored back, each downsampled by the cache's stride. A data set given its
`TeacherMaps` (`SegmentationDataset.use_teacher_maps`) adds ``teacher_logits`` to every item:
the map of the crop's flip, cut with the crop's geometry (`TrainTransform.cut`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from distillery.data.errors import DatasetError

#: The array file of image `index` inside a data set's folder of a cache.
MAP_SUFFIX = ".npy"


def map_path(folder: Path, index: int) -> Path:
    """Where image `index`'s maps are stored in a data set's folder of a cache."""
    return Path(folder) / f"{int(index)}{MAP_SUFFIX}"


class TeacherMaps:
    """The teacher maps of one data set: a folder of ``<index>.npy`` arrays."""

    def __init__(self, folder: Path, count: int) -> None:
        self.folder = Path(folder)
        self.count = int(count)

    def load(self, index: int) -> torch.Tensor:
        """Image `index`'s maps, fp16 ``(2, C, h, w)`` (unflipped, flipped)."""
        if not 0 <= index < self.count:
            raise IndexError(f"teacher cache {self.folder}: no image {index} (has {self.count})")
        path = map_path(self.folder, index)
        try:
            maps = np.load(path)
        except (OSError, ValueError) as e:
            raise DatasetError(f"{path}: unreadable teacher cache file ({e})") from None
        if maps.ndim != 4 or maps.shape[0] != 2 or maps.dtype != np.float16:
            raise DatasetError(
                f"{path}: expected fp16 (2, C, h, w) teacher maps, got {maps.dtype} {maps.shape}"
            )
        return torch.from_numpy(maps)

    def __repr__(self) -> str:
        return f"TeacherMaps({str(self.folder)!r}, count={self.count})"
