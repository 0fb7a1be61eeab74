"""Class weights for supervised terms that ask for them (``class_weights: median_frequency |
enet``), from the label statistics of the training data (raw masks, every training root).

Computed once per work folder: the weights are cached in ``<workdir>/class_weights.json``
keyed by the training roots and split, so the teacher, student and distillation stages (and
every process of a multi-process stage) share one scan.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from distillery.data import DatasetStats, class_weights, compute_stats
from distillery.spec import DatasetRef, DataSpec

CACHE_FILE = "class_weights.json"


def requested_schemes(terms: Iterable[Any]) -> list[str]:
    """The class-weight schemes the terms ask for (``none`` left out)."""
    return sorted({getattr(t, "class_weights", "none") for t in terms} - {"none"})


def merge_stats(parts: list[DatasetStats]) -> DatasetStats:
    """Statistics of the union of several splits (counts add up; frequencies recomputed)."""
    first = parts[0]
    k = len(first.class_names)

    def total(field: str) -> list[int]:
        return [sum(getattr(p, field)[c] for p in parts) for c in range(k)]

    class_pixels = total("class_pixels")
    image_count = total("image_count")
    labelled = sum(p.num_labelled_pixels for p in parts)
    images = sum(p.num_images for p in parts)
    return DatasetStats(
        format="+".join(sorted({p.format or "?" for p in parts})),
        split=first.split,
        num_images=images,
        num_pixels=sum(p.num_pixels for p in parts),
        num_labelled_pixels=labelled,
        class_names=list(first.class_names),
        class_pixels=class_pixels,
        pixel_frequency=[c / max(labelled, 1) for c in class_pixels],
        image_count=image_count,
        image_presence=[c / max(images, 1) for c in image_count],
        present_image_pixels=total("present_image_pixels"),
        object_size_bins=list(first.object_size_bins),
        object_size_hist=[[0] * (len(first.object_size_bins) - 1) for _ in range(k)],
    )


def class_weights_for(
    terms: Iterable[Any],
    data: DataSpec,
    root_of: Callable[[DatasetRef], Path],
    cache_dir: Path,
) -> dict[str, torch.Tensor] | None:
    """``{scheme: weights[19]}`` for every scheme the terms ask for, or None if none does."""
    schemes = requested_schemes(terms)
    if not schemes:
        return None
    roots = [[ref.format, str(Path(root_of(ref)).resolve())] for ref in data.train]
    key = {"roots": roots, "split": data.train_split}
    cache = Path(cache_dir) / CACHE_FILE
    cached: dict[str, Any] = {}
    if cache.is_file():
        try:
            cached = json.loads(cache.read_text())
        except ValueError:
            cached = {}
        if cached.get("key") == key and all(s in cached.get("weights", {}) for s in schemes):
            return {s: torch.tensor(cached["weights"][s], dtype=torch.float32) for s in schemes}
    stats = merge_stats(
        [compute_stats(root, fmt, data.train_split, object_sizes=False) for fmt, root in roots]
    )
    weights = {s: class_weights(stats, s) for s in schemes}  # type: ignore[arg-type]
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"key": key, "weights": {s: w.tolist() for s, w in weights.items()}}))
    os.replace(tmp, cache)
    return weights
