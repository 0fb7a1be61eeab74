from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from distillery.data import class_weights, compute_stats
from distillery.data.stats import stats_from_masks
from distillery.spec import CrossEntropyTerm, FocalTerm, LogitKDTerm
from distillery.training.class_weights import class_weights_for, merge_stats, requested_schemes


def test_merged_stats_equal_the_stats_of_all_masks() -> None:
    rng = np.random.default_rng(0)
    masks = [rng.integers(0, 4, (8, 8)) for _ in range(5)]
    masks[1][:2] = 255
    parts = [
        stats_from_masks(masks[:2], object_sizes=False),
        stats_from_masks(masks[2:], object_sizes=False),
    ]
    whole = stats_from_masks(masks, object_sizes=False)
    merged = merge_stats(parts)
    for method in ("median_frequency", "enet"):
        torch.testing.assert_close(class_weights(merged, method), class_weights(whole, method))


def test_requested_schemes() -> None:
    terms = [
        CrossEntropyTerm(class_weights="enet"),
        FocalTerm(class_weights="median_frequency"),
        LogitKDTerm(),
    ]
    assert requested_schemes(terms) == ["enet", "median_frequency"]
    assert requested_schemes([CrossEntropyTerm()]) == []


def test_weights_are_computed_once_and_cached(make_spec, data_root: Path, tmp_path: Path) -> None:
    spec = make_spec()
    terms = [CrossEntropyTerm(class_weights="enet")]
    w = class_weights_for(terms, spec.data, lambda ref: Path(ref.root), tmp_path)
    expected = class_weights(compute_stats(data_root, "cityscapes", "train"), "enet")
    torch.testing.assert_close(w["enet"], expected)
    cache = tmp_path / "class_weights.json"
    mtime = cache.stat().st_mtime_ns
    again = class_weights_for(terms, spec.data, lambda ref: Path(ref.root), tmp_path)
    torch.testing.assert_close(again["enet"], expected)
    assert cache.stat().st_mtime_ns == mtime
    assert (
        class_weights_for([CrossEntropyTerm()], spec.data, lambda r: Path(r.root), tmp_path) is None
    )


@pytest.mark.parametrize("scheme", ["median_frequency", "enet"])
def test_schemes_give_19_non_negative_weights(make_spec, tmp_path: Path, scheme: str) -> None:
    spec = make_spec()
    w = class_weights_for(
        [CrossEntropyTerm(class_weights=scheme)], spec.data, lambda r: Path(r.root), tmp_path
    )
    assert w[scheme].shape == (19,) and (w[scheme] >= 0).all() and w[scheme].max() > 0
