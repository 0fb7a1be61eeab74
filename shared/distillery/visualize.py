"""Images for tracking, built with numpy (and PIL for text): segmentation panels and feature maps.

- `segmentation_panel`: input | ground truth | prediction, labels blended over the input in the
  Cityscapes palette.
- `feature_grid`: one row per feature tap; columns teacher mean, teacher PCA, student mean,
  student PCA. The channel mean is ``mean_c F[c]``; the PCA image projects every pixel's
  C-vector (centred) on the 3 leading principal components, one per RGB channel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from distillery.data.labels import IGNORE_INDEX, colorize

#: Background of blank tiles and label strips.
_BACKGROUND = 32
_TEXT = (235, 235, 235)
_PAD = 2


# ------------------------------------------------------------------------------ helpers


def _as_uint8_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3, got shape {image.shape}")
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    return image


def normalize_to_uint8(x: np.ndarray) -> np.ndarray:
    """Min-max scale to 0..255 (a constant array becomes 0)."""
    x = np.asarray(x, dtype=np.float64)
    lo, hi = float(x.min()), float(x.max())
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return np.zeros(x.shape, dtype=np.uint8)
    return np.round((x - lo) / (hi - lo) * 255).astype(np.uint8)


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _text_size(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> tuple[int, int]:
    box = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    return box[2] - box[0], box[3] - box[1]


def _resize_nearest(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if img.shape[:2] == hw:
        return img
    return np.asarray(Image.fromarray(img).resize((hw[1], hw[0]), Image.Resampling.NEAREST))


def _header(labels: Sequence[str], widths: Sequence[int], left: int) -> np.ndarray:
    """A strip of column titles above tiles of the given widths (after a `left` margin)."""
    font = _font()
    h = max(_text_size(t, font)[1] for t in labels) + 2 * _PAD + 2
    total = left + sum(widths) + _PAD * (len(widths) - 1)
    strip = Image.new("RGB", (total, h), (_BACKGROUND,) * 3)
    x = left
    for text, w in zip(labels, widths, strict=True):
        cell = Image.new("RGB", (w, h), (_BACKGROUND,) * 3)  # clips a title wider than its tile
        ImageDraw.Draw(cell).text((_PAD, _PAD), text, fill=_TEXT, font=font)
        strip.paste(cell, (x, 0))
        x += w + _PAD
    return np.asarray(strip)


def _hstack(tiles: Sequence[np.ndarray]) -> np.ndarray:
    h = tiles[0].shape[0]
    gap = np.full((h, _PAD, 3), _BACKGROUND, dtype=np.uint8)
    out: list[np.ndarray] = []
    for i, t in enumerate(tiles):
        if i:
            out.append(gap)
        out.append(t)
    return np.concatenate(out, axis=1)


def _vstack(rows: Sequence[np.ndarray]) -> np.ndarray:
    w = max(r.shape[1] for r in rows)
    padded = []
    for r in rows:
        if r.shape[1] < w:
            r = np.pad(r, ((0, 0), (0, w - r.shape[1]), (0, 0)), constant_values=_BACKGROUND)
        padded.append(r)
    return np.concatenate(padded, axis=0)


# ------------------------------------------------------------------------- segmentation


def overlay(image: np.ndarray, train_ids: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Blend the Cityscapes colours of (H, W) `train_ids` over an (H, W, 3) image; ignore
    pixels (255) keep the image."""
    image = _as_uint8_image(image)
    train_ids = np.asarray(train_ids)
    if train_ids.shape != image.shape[:2]:
        raise ValueError(f"labels of shape {train_ids.shape} do not fit image {image.shape}")
    colours = colorize(train_ids).astype(np.float32)
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colours
    out = np.where((train_ids == IGNORE_INDEX)[..., None], image, np.round(blended))
    return out.astype(np.uint8)


def segmentation_panel(
    image: np.ndarray, gt: np.ndarray, pred: np.ndarray, alpha: float = 0.6, titles: bool = True
) -> np.ndarray:
    """``input | ground truth | prediction`` side by side (uint8 RGB), titled if `titles`."""
    image = _as_uint8_image(image)
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != image.shape[:2] or pred.shape != image.shape[:2]:
        raise ValueError(
            f"image {image.shape[:2]}, ground truth {gt.shape} and prediction {pred.shape} "
            "must have the same height and width"
        )
    tiles = [image, overlay(image, gt, alpha), overlay(image, pred, alpha)]
    body = _hstack(tiles)
    if not titles:
        return body
    w = image.shape[1]
    return _vstack([_header(["input", "ground truth", "prediction"], [w] * 3, 0), body])


# ------------------------------------------------------------------------- feature maps


def _feature_chw(feature: torch.Tensor | np.ndarray) -> np.ndarray:
    """(C, H, W) float64 from (C, H, W), (1, C, H, W) or (B, C, H, W) (first sample)."""
    f = feature.detach().float().cpu().numpy() if isinstance(feature, torch.Tensor) else feature
    f = np.asarray(f, dtype=np.float64)
    if f.ndim == 4:
        f = f[0]
    if f.ndim == 2:
        f = f[None]
    if f.ndim != 3:
        raise ValueError(f"a feature map is (C, H, W) or (B, C, H, W), got shape {f.shape}")
    return f


def channel_mean(feature: torch.Tensor | np.ndarray) -> np.ndarray:
    """(H, W) float64 mean over channels of a (C, H, W) or (B, C, H, W) feature map."""
    return _feature_chw(feature).mean(axis=0)


def pca_components(feature: torch.Tensor | np.ndarray, k: int = 3) -> np.ndarray:
    """(H, W, k) projections of the centred per-pixel C-vectors on the top-k principal axes.

    Components beyond the rank (e.g. C < k) are zero. Each axis's sign is fixed so that its
    largest-magnitude loading is positive (stable colours from step to step).
    """
    f = _feature_chw(feature)
    c, h, w = f.shape
    x = f.reshape(c, h * w).T  # (pixels, C)
    x = x - x.mean(axis=0, keepdims=True)
    out = np.zeros((h * w, k), dtype=np.float64)
    if h * w > 1:
        _, s, vt = np.linalg.svd(x, full_matrices=False)
        tol = s.max(initial=0.0) * max(x.shape) * np.finfo(np.float64).eps
        for i in range(min(k, vt.shape[0])):
            if s[i] <= tol:
                break
            axis = vt[i]
            axis = axis * np.sign(axis[np.argmax(np.abs(axis))])
            out[:, i] = x @ axis
    return out.reshape(h, w, k)


def pca_rgb(feature: torch.Tensor | np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: the 3 leading principal components, each min-max scaled to 0..255."""
    comps = pca_components(feature, 3)
    return np.stack([normalize_to_uint8(comps[..., i]) for i in range(3)], axis=-1)


def mean_gray(feature: torch.Tensor | np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 grey image of the min-max scaled channel mean."""
    return np.repeat(normalize_to_uint8(channel_mean(feature))[..., None], 3, axis=2)


def _tile_size(
    features: Sequence[Mapping[str, torch.Tensor | np.ndarray]], max_width: int
) -> tuple[int, int]:
    h, w = max(
        (_feature_chw(f).shape[1:] for fs in features for f in fs.values()),
        key=lambda hw: hw[0] * hw[1],
    )
    if w > max_width:
        h, w = max(1, round(h * max_width / w)), max_width
    return int(h), int(w)


def feature_grid(
    teacher: Mapping[str, torch.Tensor | np.ndarray] | None,
    student: Mapping[str, torch.Tensor | np.ndarray],
    max_tile_width: int = 256,
) -> np.ndarray:
    """A uint8 RGB grid: one row per tap (the student's taps, then the teacher's others),
    columns [teacher mean, teacher PCA,] student mean, student PCA. Each tile is upsampled
    (nearest) to the largest map's size, at most `max_tile_width` wide; a tap missing on one
    side leaves blank tiles. Rows are labelled with the tap name."""
    if not student:
        raise ValueError("feature_grid: no student feature maps given")
    sides: list[tuple[str, Mapping[str, torch.Tensor | np.ndarray]]] = []
    if teacher:
        sides.append(("teacher", teacher))
    sides.append(("student", student))
    taps = list(dict.fromkeys([*student, *(teacher or {})]))
    titles = [f"{side} {kind}" for side, _ in sides for kind in ("mean", "PCA")]
    font = _font()
    th, tw = _tile_size([fs for _, fs in sides], max_tile_width)
    min_w = max(_text_size(t, font)[0] for t in titles) + 2 * _PAD
    if tw < min_w:  # small maps: enlarge by a whole factor so the column titles fit
        factor = -(-min_w // tw)
        th, tw = th * factor, tw * factor
    blank = np.full((th, tw, 3), _BACKGROUND, dtype=np.uint8)

    label_w = max(_text_size(t, font)[0] for t in taps) + 3 * _PAD
    rows: list[np.ndarray] = []
    for tap in taps:
        tiles: list[np.ndarray] = []
        for _, fs in sides:
            if tap in fs:
                tiles += [
                    _resize_nearest(mean_gray(fs[tap]), (th, tw)),
                    _resize_nearest(pca_rgb(fs[tap]), (th, tw)),
                ]
            else:
                tiles += [blank, blank]
        label = Image.new("RGB", (label_w, th), (_BACKGROUND,) * 3)
        ImageDraw.Draw(label).text((_PAD, _PAD), tap, fill=_TEXT, font=font)
        rows.append(np.concatenate([np.asarray(label), _hstack(tiles)], axis=1))
    header = _header(titles, [tw] * len(titles), label_w)
    gap = np.full((_PAD, rows[0].shape[1], 3), _BACKGROUND, dtype=np.uint8)
    body: list[np.ndarray] = [header]
    for r in rows:
        body += [gap, r]
    return _vstack(body)
