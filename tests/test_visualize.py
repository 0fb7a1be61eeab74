"""Feature-map images (channel mean, PCA as RGB) and segmentation panels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distillery.data.labels import PALETTE
from distillery.visualize import (
    channel_mean,
    feature_grid,
    overlay,
    pca_components,
    pca_rgb,
    segmentation_panel,
)


def _structured_feature(scales: tuple[float, float, float] = (5.0, 3.0, 1.0)):
    """(C=6, 8, 8): three orthogonal zero-mean spatial patterns on orthonormal channel axes."""
    h = w = 8
    rows, cols = np.mgrid[0:h, 0:w]
    patterns = [
        np.where(cols < w // 2, 1.0, -1.0),  # left / right
        np.where(rows < h // 2, 1.0, -1.0),  # top / bottom
        (-1.0) ** (rows + cols),  # checkerboard
    ]
    axes, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(6, 3)))  # orthonormal columns
    f = sum(
        s * axes[:, k, None, None] * p
        for k, (s, p) in enumerate(zip(scales, patterns, strict=True))
    )
    return torch.tensor(f[None] + 7.0, dtype=torch.float32), patterns  # (1, C, H, W), offset


def test_channel_mean_is_the_mean_over_channels() -> None:
    f = torch.randn(2, 5, 4, 6)
    np.testing.assert_allclose(channel_mean(f), f[0].mean(0).numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(channel_mean(f[1].numpy()), f[1].mean(0).numpy(), atol=1e-6)


def test_pca_recovers_known_components_in_order() -> None:
    f, patterns = _structured_feature()
    comps = pca_components(f)
    assert comps.shape == (8, 8, 3)
    for k, p in enumerate(patterns):
        corr = np.corrcoef(comps[..., k].ravel(), p.ravel())[0, 1]
        assert abs(corr) == pytest.approx(1.0, abs=1e-6), k
    # variances follow the scales 5 > 3 > 1
    assert comps[..., 0].std() == pytest.approx(5.0, rel=1e-4)
    assert comps[..., 2].std() == pytest.approx(1.0, rel=1e-4)


def test_pca_rgb_shape_and_range() -> None:
    f, patterns = _structured_feature()
    rgb = pca_rgb(f)
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    for k, p in enumerate(patterns):
        # each channel is its two-valued pattern stretched to the full 0..255 range
        assert set(np.unique(rgb[..., k])) == {0, 255}
        assert len(np.unique(rgb[..., k][p > 0])) == 1


def test_pca_sign_is_fixed_by_the_largest_loading() -> None:
    pattern = np.where(np.arange(8) < 4, 1.0, -1.0)[None, :].repeat(4, 0)  # (4, 8)
    f = torch.tensor(np.stack([2 * pattern, pattern]))  # axis (2, 1)/sqrt(5), channel 0 leads
    up = pca_components(f)[..., 0]
    down = pca_components(-f)[..., 0]
    assert np.corrcoef(up.ravel(), pattern.ravel())[0, 1] == pytest.approx(1.0)
    assert np.corrcoef(down.ravel(), pattern.ravel())[0, 1] == pytest.approx(-1.0)


def test_pca_fewer_channels_than_components_and_constant_maps() -> None:
    one = pca_rgb(torch.arange(12.0).reshape(1, 3, 4))
    assert one.shape == (3, 4, 3)
    assert one[..., 0].min() == 0 and one[..., 0].max() == 255
    assert not one[..., 1:].any()  # no 2nd/3rd component for one channel
    const = pca_rgb(torch.ones(4, 3, 5))
    assert const.shape == (3, 5, 3) and not const.any()


def test_feature_grid_layout() -> None:
    teacher = {"encoder.0": torch.randn(1, 8, 16, 32), "bottleneck": torch.randn(1, 32, 2, 4)}
    student = {
        "encoder.0": torch.randn(1, 4, 16, 32),
        "bottleneck": torch.randn(1, 8, 2, 4),
        "logits": torch.randn(1, 19, 16, 32),
    }
    both = feature_grid(teacher, student)
    alone = feature_grid(None, student)
    assert both.dtype == np.uint8 and both.ndim == 3 and both.shape[2] == 3
    # same rows (3 taps), two more columns with a teacher
    assert both.shape[0] == alone.shape[0]
    assert both.shape[1] > alone.shape[1]
    # tiles are at least the size of the largest map (16x32): 3 rows + header
    assert both.shape[0] >= 3 * 16
    wide = feature_grid(None, {"encoder.0": torch.randn(3, 64, 512)}, max_tile_width=256)
    assert 2 * 256 < wide.shape[1] < 2 * 512  # tiles shrunk to 32x256 (+ label column)
    assert 32 < wide.shape[0] < 64
    with pytest.raises(ValueError, match="no student"):
        feature_grid(teacher, {})


def test_overlay_and_panel() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (8, 16, 3), dtype=np.uint8)
    gt = np.zeros((8, 16), np.uint8)
    gt[:, :4] = 255
    gt[:, 8:] = 13
    full = overlay(image, gt, alpha=1.0)
    np.testing.assert_array_equal(full[:, :4], image[:, :4])  # ignore keeps the image
    assert (full[:, 8:] == PALETTE[13]).all() and (full[:, 4:8] == PALETTE[0]).all()

    panel = segmentation_panel(image, gt, gt, titles=False)
    assert panel.shape == (8, 3 * 16 + 2 * 2, 3)
    np.testing.assert_array_equal(panel[:, :16], image)
    titled = segmentation_panel(image, gt, gt)
    assert titled.shape[1] == panel.shape[1] and titled.shape[0] > 8
    with pytest.raises(ValueError, match="same height and width"):
        segmentation_panel(image, gt, gt[:4])
