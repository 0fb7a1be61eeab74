"""Supervised pixel losses against a label map: cross-entropy, focal and OHEM.

Notation (per pixel i of the valid set V = {i : y_i != ignore_index}):
``p_i = softmax(z_i)`` over the C classes, ``p_t = p_{i, y_i}`` (probability of the true class),
``w_c`` the class weights (all 1 when none are given).

Each loss checks by default that every non-ignored label is a class index (an error listing
the bad values). That check reads a result back from the device; the trainer passes
``check_targets=False`` (its data sets check label values when they load a mask), so a training
step never waits on the device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from distillery.losses._common import (
    IGNORE_INDEX,
    float32_loss,
    masked_mean,
    safe_labels,
    valid_mask,
)


def _check_weights(class_weights: Tensor | None, num_classes: int) -> None:
    if class_weights is None:
        return
    if class_weights.shape != (num_classes,):
        raise ValueError(
            f"class_weights must have shape ({num_classes},) for {num_classes} classes, "
            f"got {tuple(class_weights.shape)}"
        )


def _true_class_terms(
    logits: Tensor,
    target: Tensor,
    class_weights: Tensor | None,
    ignore_index: int,
    check_targets: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(log_probs (N,C,H,W), log p_t (N,H,W), w_{y_i} (N,H,W), valid (N,H,W))."""
    _check_weights(class_weights, logits.shape[1])
    valid = valid_mask(target, logits, ignore_index, check_targets)
    labels = safe_labels(target, valid)
    log_probs = F.log_softmax(logits, dim=1)
    log_pt = log_probs.gather(1, labels.unsqueeze(1)).squeeze(1)
    w_t = class_weights.to(logits)[labels] if class_weights is not None else torch.ones_like(log_pt)
    return log_probs, log_pt, w_t, valid


@float32_loss
def cross_entropy(
    logits: Tensor,
    target: Tensor,
    class_weights: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    label_smoothing: float = 0.0,
    check_targets: bool = True,
) -> Tensor:
    """Pixel cross-entropy with class weights, an ignore index and label smoothing eps.

    ``l_i = (1 - eps) * w_{y_i} * (-log p_t) + (eps / C) * sum_c w_c * (-log p_{i,c})``
    ``CE = sum_{i in V} l_i / sum_{i in V} w_{y_i}``

    (the convention of ``torch.nn.functional.cross_entropy``: with eps = 0 it is the
    w-weighted mean of -log p_t over valid pixels). 0 when no pixel is valid.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    log_probs, log_pt, w_t, valid = _true_class_terms(
        logits, target, class_weights, ignore_index, check_targets
    )
    if label_smoothing == 0:
        return masked_mean(-log_pt, valid, w_t)
    c = logits.shape[1]
    w = class_weights.to(logits) if class_weights is not None else logits.new_ones(c)
    smooth = -(log_probs * w.view(1, c, 1, 1)).sum(1) / c
    per_pixel = (1 - label_smoothing) * w_t * -log_pt + label_smoothing * smooth
    zero = per_pixel.new_zeros(())
    numerator = torch.where(valid, per_pixel, zero).sum()
    denominator = torch.where(valid, w_t, zero).sum()
    return numerator / denominator.clamp_min(torch.finfo(denominator.dtype).tiny)


@float32_loss
def focal_loss(
    logits: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    class_weights: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    check_targets: bool = True,
) -> Tensor:
    """Focal loss (Lin et al. 2017), averaged over valid pixels.

    ``FL_i = -(1 - p_t)^gamma * log p_t``
    ``loss = sum_{i in V} w_{y_i} * FL_i / sum_{i in V} w_{y_i}``  (the plain mean over V
    without class weights; gamma = 0 gives exactly `cross_entropy`). 0 when no pixel is valid.
    """
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    _, log_pt, w_t, valid = _true_class_terms(
        logits, target, class_weights, ignore_index, check_targets
    )
    one_minus_pt = (-torch.expm1(log_pt)).clamp_min(torch.finfo(log_pt.dtype).tiny)
    per_pixel = -one_minus_pt.pow(gamma) * log_pt
    return masked_mean(per_pixel, valid, w_t)


@float32_loss
def ohem_loss(
    logits: Tensor,
    target: Tensor,
    threshold: float = 0.7,
    min_kept_fraction: float = 0.1,
    class_weights: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    check_targets: bool = True,
) -> Tensor:
    """Online hard example mining cross-entropy over the whole batch.

    Hard pixels: ``H = {i in V : p_t < threshold}``. If ``|H| < k`` with
    ``k = ceil(min_kept_fraction * |V|)``, the valid pixels with p_t at most the k-th lowest
    p_t are kept instead (the k hardest, and any tied with the k-th). Over the kept set K:
    ``OHEM = sum_{i in K} w_{y_i} * (-log p_t) / sum_{i in K} w_{y_i}``.
    The selection is not differentiated and is made on the device (no host-device sync: k is
    a tensor, the k-th value is read from a sort). 0 when no pixel is valid.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if not 0.0 < min_kept_fraction <= 1.0:
        raise ValueError(f"min_kept_fraction must be in (0, 1], got {min_kept_fraction}")
    _, log_pt, w_t, valid = _true_class_terms(
        logits, target, class_weights, ignore_index, check_targets
    )
    with torch.no_grad():
        pt = log_pt.detach().exp()
        hard = valid & (pt < threshold)
        n_valid = valid.sum()
        # ceil(f * n) in float64 (exact for any pixel count), as the int64 count k
        k = torch.ceil(n_valid.double() * min_kept_fraction).long()
        ranked = torch.where(valid, pt, torch.full_like(pt, math.inf)).flatten().sort().values
        kth = ranked.gather(0, (k - 1).clamp_min(0).view(1)).squeeze(0)
        hardest = valid & (pt <= kth)
        kept = torch.where(hard.sum() < k, hardest, hard)
    return masked_mean(-log_pt, kept, w_t)
