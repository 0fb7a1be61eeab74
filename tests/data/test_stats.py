"""Dataset statistics and class weights against a hand-computed example."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from distillery.data import CityscapesDataset, DatasetStats, class_weights, compute_stats
from distillery.data.stats import stats_from_masks
from distillery.data.validate import validate_dataset

# Two tiny masks (255 = ignore):
#   m1: class 0 has 3 pixels (one L-shaped object), class 1 has 2 (one object); 5 labelled
#   m2: class 0 has 2 pixels (two single-pixel objects), class 2 has 4 (one object); 6 labelled
M1 = np.array([[0, 0, 1], [0, 255, 1]], dtype=np.uint8)
M2 = np.array([[0, 2, 2], [2, 2, 0]], dtype=np.uint8)


@pytest.fixture
def tiny() -> DatasetStats:
    return stats_from_masks([M1, M2])


def test_counts_by_hand(tiny: DatasetStats) -> None:
    assert tiny.num_images == 2 and tiny.num_pixels == 12 and tiny.num_labelled_pixels == 11
    assert tiny.class_pixels[:3] == [5, 2, 4] and sum(tiny.class_pixels[3:]) == 0
    assert tiny.pixel_frequency[:3] == pytest.approx([5 / 11, 2 / 11, 4 / 11])
    assert tiny.image_count[:3] == [2, 1, 1]
    assert tiny.image_presence[:3] == [1.0, 0.5, 0.5]
    assert tiny.present_image_pixels[:3] == [11, 5, 6]
    assert tiny.object_size_bins[:4] == [1, 2, 4, 8]
    assert tiny.object_size_hist[0][:3] == [2, 1, 0]  # two 1-pixel objects, one of 3 pixels
    assert tiny.object_size_hist[1][:3] == [0, 1, 0]  # one of 2 pixels
    assert tiny.object_size_hist[2][:3] == [0, 0, 1]  # one of 4 pixels
    assert tiny.num_objects[:4] == [3, 1, 1, 0]
    assert len(tiny.class_names) == 19 and tiny.class_names[0] == "road"


def test_median_frequency_by_hand(tiny: DatasetStats) -> None:
    # f = pixels / labelled pixels of images where present: 5/11, 2/5, 4/6; median = 5/11
    w = class_weights(tiny, "median_frequency")
    assert w.shape == (19,) and w.dtype == torch.float32
    assert w[:3].tolist() == pytest.approx([1.0, 25 / 22, 15 / 22], rel=1e-6)
    assert torch.all(w[3:] == 0)  # absent classes


def test_enet_by_hand(tiny: DatasetStats) -> None:
    w = class_weights(tiny, "enet")
    want = [1 / math.log(1.02 + p) for p in (5 / 11, 2 / 11, 4 / 11)]
    assert w[:3].tolist() == pytest.approx(want, rel=1e-6)
    assert torch.all(w[3:] == 0)
    with pytest.raises(ValueError, match="unknown class-weight method"):
        class_weights(tiny, "inverse")  # type: ignore[arg-type]


def test_json_roundtrip(tiny: DatasetStats) -> None:
    again = DatasetStats.model_validate_json(tiny.model_dump_json())
    assert again == tiny


def test_bad_mask_values_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\[19\]"):
        stats_from_masks([np.array([[19]], dtype=np.uint8)])


def test_compute_stats_reads_raw_masks(synthetic_data: dict[str, Path]) -> None:
    root = synthetic_data["cityscapes"]
    stats = compute_stats(root, "cityscapes", "val")
    report = validate_dataset(root, "cityscapes", "val")
    assert stats.num_images == 8 and stats.format == "cityscapes" and stats.split == "val"
    assert stats.class_pixels == report["class_pixels"]
    assert stats.num_pixels == 8 * 64 * 128
    same = compute_stats(CityscapesDataset(root, "val"))
    assert same == stats
    capped = compute_stats(root, "cityscapes", "val", max_images=2, object_sizes=False)
    assert capped.num_images == 2 and sum(map(sum, capped.object_size_hist)) == 0
    with pytest.raises(ValueError, match="fmt"):
        compute_stats(root)
    # rare classes get the big weights
    w = class_weights(compute_stats(root, "cityscapes", "train"), "median_frequency")
    assert w[0] < 1 < w[6]  # road < median < traffic light
