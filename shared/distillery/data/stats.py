"""Data set statistics (from raw masks, no augmentation) and the class weights derived from them.

Weights (``class_weights``), for the 19 classes:

- median-frequency balancing (Eigen & Fergus, 2015): ``w_c = median_k(f_k) / f_c`` where
  ``f_c`` = pixels of class c / labelled pixels of the images in which c is present; the median
  is taken over the classes that occur;
- ENet (Paszke et al., 2016): ``w_c = 1 / ln(1.02 + p_c)`` with ``p_c`` = pixels of class c /
  all labelled pixels.

"Labelled" pixels exclude the ignore index 255. A class that never occurs gets weight 0 under
both methods (it contributes nothing to the loss, instead of an infinite or arbitrary weight).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel

from distillery.data.components import connected_components
from distillery.data.datasets import DATASETS, SegmentationDataset
from distillery.data.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES

#: Object-size histogram bin edges in pixels: bin i counts components with
#: 2**i <= area < 2**(i+1); the last bin also takes everything larger.
OBJECT_SIZE_BINS: list[int] = [2**i for i in range(0, 23)]

ENET_C = 1.02


class DatasetStats(BaseModel):
    """Per-class statistics of one split (JSON-serialisable; the gateway stores it)."""

    format: str | None = None
    split: str | None = None
    num_images: int
    num_pixels: int
    num_labelled_pixels: int
    class_names: list[str]
    #: pixels of each class
    class_pixels: list[int]
    #: class_pixels / num_labelled_pixels
    pixel_frequency: list[float]
    #: number of images in which each class occurs
    image_count: list[int]
    #: image_count / num_images
    image_presence: list[float]
    #: labelled pixels of the images in which each class occurs (for median-frequency weights)
    present_image_pixels: list[int]
    #: bin edges (pixels) of the object-size histogram; see OBJECT_SIZE_BINS
    object_size_bins: list[int]
    #: per class, the number of 4-connected components in each size bin
    object_size_hist: list[list[int]]

    @property
    def num_objects(self) -> list[int]:
        return [sum(h) for h in self.object_size_hist]


class StatsAccumulator:
    """Add trainId masks one at a time; `result()` gives the `DatasetStats`."""

    def __init__(self, num_classes: int = NUM_CLASSES, object_sizes: bool = True) -> None:
        self.k = num_classes
        self.object_sizes = object_sizes
        self.n_images = 0
        self.n_pixels = 0
        self.class_pixels = np.zeros(num_classes, dtype=np.int64)
        self.image_count = np.zeros(num_classes, dtype=np.int64)
        self.present_pixels = np.zeros(num_classes, dtype=np.int64)
        self.hist = np.zeros((num_classes, len(OBJECT_SIZE_BINS) - 1), dtype=np.int64)

    def add(self, mask: np.ndarray) -> None:
        """One HxW mask of trainIds (0..k-1, 255 = ignore)."""
        mask = np.asarray(mask)
        counts = np.bincount(mask.ravel().astype(np.int64), minlength=256)
        bad = np.flatnonzero(counts[self.k :]) + self.k
        bad = bad[bad != IGNORE_INDEX]
        if bad.size:
            raise ValueError(f"mask holds values {bad[:10].tolist()} outside 0..{self.k - 1}, 255")
        per_class = counts[: self.k]
        present = per_class > 0
        self.n_images += 1
        self.n_pixels += mask.size
        self.class_pixels += per_class
        self.image_count += present
        self.present_pixels += present * int(per_class.sum())
        if self.object_sizes:
            classes, sizes = connected_components(mask, ignore=IGNORE_INDEX)
            bins = np.log2(np.maximum(sizes, 1)).astype(np.int64)
            bins = np.clip(bins, 0, self.hist.shape[1] - 1)
            np.add.at(self.hist, (classes.astype(np.int64), bins), 1)

    def result(self, fmt: str | None = None, split: str | None = None) -> DatasetStats:
        labelled = int(self.class_pixels.sum())
        names = list(CLASS_NAMES) if self.k == NUM_CLASSES else [str(i) for i in range(self.k)]
        return DatasetStats(
            format=fmt,
            split=split,
            num_images=self.n_images,
            num_pixels=self.n_pixels,
            num_labelled_pixels=labelled,
            class_names=names,
            class_pixels=self.class_pixels.tolist(),
            pixel_frequency=(self.class_pixels / max(labelled, 1)).tolist(),
            image_count=self.image_count.tolist(),
            image_presence=(self.image_count / max(self.n_images, 1)).tolist(),
            present_image_pixels=self.present_pixels.tolist(),
            object_size_bins=list(OBJECT_SIZE_BINS),
            object_size_hist=self.hist.tolist(),
        )


def stats_from_masks(
    masks: Iterable[np.ndarray], num_classes: int = NUM_CLASSES, object_sizes: bool = True
) -> DatasetStats:
    """Statistics of trainId masks given directly (e.g. a hand-made example)."""
    acc = StatsAccumulator(num_classes, object_sizes)
    for m in masks:
        acc.add(m)
    return acc.result()


def compute_stats(
    source: SegmentationDataset | str | Path,
    fmt: str | None = None,
    split: str = "train",
    *,
    max_images: int | None = None,
    object_sizes: bool = True,
    progress: bool = False,
) -> DatasetStats:
    """Statistics of a split read from its raw masks at their stored size (no augmentation).

    `source` is a data set (its masks are read with `load_mask`) or a root folder, in which case
    `fmt` (cityscapes | bdd100k) and `split` say what to read. `max_images` limits the scan to
    the first images; `object_sizes=False` skips the connected-component histogram.
    """
    if isinstance(source, SegmentationDataset):
        ds = source
    else:
        if fmt is None:
            raise ValueError("give fmt (cityscapes or bdd100k) when source is a folder")
        ds = DATASETS.get(fmt)(source, split)
    n = len(ds) if max_images is None else min(len(ds), max_images)
    acc = StatsAccumulator(NUM_CLASSES, object_sizes)
    indices: Iterable[int] = range(n)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc=f"stats {ds.format}/{ds.split}", unit="img")
    for i in indices:
        acc.add(ds.load_mask(i))
    return acc.result(ds.format, ds.split)


def class_weights(stats: DatasetStats, method: Literal["median_frequency", "enet"]) -> torch.Tensor:
    """Per-class loss weights (float32, shape [num_classes]); absent classes get 0.

    - ``median_frequency``: ``w_c = median(f) / f_c``, ``f_c = pixels_c / present_image_pixels_c``;
    - ``enet``: ``w_c = 1 / ln(1.02 + p_c)``, ``p_c = pixels_c / labelled pixels``.
    """
    pixels = np.asarray(stats.class_pixels, dtype=np.float64)
    present = pixels > 0
    w = np.zeros_like(pixels)
    if method == "median_frequency":
        denom = np.asarray(stats.present_image_pixels, dtype=np.float64)
        freq = np.divide(pixels, denom, out=np.zeros_like(pixels), where=denom > 0)
        if present.any():
            w[present] = np.median(freq[present]) / freq[present]
    elif method == "enet":
        p = np.asarray(stats.pixel_frequency, dtype=np.float64)
        w[present] = 1.0 / np.log(ENET_C + p[present])
    else:
        raise ValueError(f"unknown class-weight method {method!r}; use median_frequency or enet")
    return torch.tensor(w, dtype=torch.float32)


def plot_stats(stats: DatasetStats, path: str | Path) -> Path:
    """A PNG with pixel frequency, image presence and the object-size histogram per class."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    from distillery.data.labels import PALETTE

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    k = len(stats.class_names)
    colors = [PALETTE[i] / 255.0 for i in range(k)] if k == NUM_CLASSES else None
    fig = Figure(figsize=(11, 11), layout="constrained")
    axes = fig.subplots(3, 1)
    x = np.arange(k)
    freq = np.maximum(np.asarray(stats.pixel_frequency), 1e-7)
    axes[0].bar(x, freq, color=colors, edgecolor="black", linewidth=0.4)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("pixel frequency")
    axes[1].bar(x, stats.image_presence, color=colors, edgecolor="black", linewidth=0.4)
    axes[1].set_ylim(0, 1)
    axes[1].set_ylabel("image presence")
    for ax in axes[:2]:
        ax.set_xticks(x, stats.class_names, rotation=45, ha="right")
    hist = np.asarray(stats.object_size_hist, dtype=np.float64)
    used = np.flatnonzero(hist.sum(0))
    hi = int(used.max()) + 1 if used.size else 1
    im = axes[2].imshow(np.log10(1 + hist[:, :hi]), aspect="auto", cmap="viridis")
    axes[2].set_yticks(x, stats.class_names)
    axes[2].set_xticks(np.arange(hi), [f"2^{i}" for i in range(hi)], rotation=45)
    axes[2].set_xlabel("object area (pixels, log2 bins)")
    fig.colorbar(im, ax=axes[2], label="log10(1 + objects)")
    title = f"{stats.format or ''} {stats.split or ''}: {stats.num_images} images".strip()
    fig.suptitle(title)
    fig.savefig(path, dpi=80, format="png")
    return path
