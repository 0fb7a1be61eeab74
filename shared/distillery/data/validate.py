"""Scan a whole split and stop at the first problem (the gateway runs it on registration)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from distillery.data.datasets import DATASETS
from distillery.data.labels import NUM_CLASSES


def validate_dataset(root: str | Path, fmt: str, split: str) -> dict:
    """Read every image and mask of `split` and check them; raise `DatasetError` on the first
    problem (the message names the file). Returns counts::

        {"format", "split", "images", "image_sizes": {"HxW": n}, "class_pixels": [19 ints],
         "ignore_pixels": int}
    """
    try:
        cls = DATASETS.get(fmt)
    except KeyError as e:
        raise ValueError(str(e.args[0])) from None
    ds = cls(root, split)
    sizes: Counter[str] = Counter()
    class_pixels = np.zeros(NUM_CLASSES, dtype=np.int64)
    ignore = 0
    for i in range(len(ds)):
        image, mask = ds.load(i)
        sizes[f"{image.shape[0]}x{image.shape[1]}"] += 1
        counts = np.bincount(mask.ravel(), minlength=256)
        class_pixels += counts[:NUM_CLASSES]
        ignore += int(counts[NUM_CLASSES:].sum())
    return {
        "format": fmt,
        "split": split,
        "images": len(ds),
        "image_sizes": dict(sizes),
        "class_pixels": class_pixels.tolist(),
        "ignore_pixels": ignore,
    }
