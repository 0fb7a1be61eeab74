"""DIST (Huang et al., NeurIPS 2022): distillation by correlation of class probabilities.

No adapters and no feature maps: only the logits. The teacher argument is not detached here (the
`Objective` does that).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from distillery.losses._common import IGNORE_INDEX, float32_loss, valid_mask
from distillery.losses.kd import _check_pair, _check_temperature

#: Added to the norms' product in the Pearson correlation (a constant vector correlates 0).
PEARSON_EPS = 1e-8


def pearson_rows(a: Tensor, b: Tensor, eps: float = PEARSON_EPS) -> Tensor:
    """Pearson correlation of each row of `a` with the same row of `b` (both (R, K)):
    ``rho(u, v) = <u - mean(u), v - mean(v)> / (|u - mean(u)| |v - mean(v)| + eps)``."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


@float32_loss
def dist_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    beta: float = 1.0,
    gamma: float = 1.0,
    target: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """DIST on segmentation logits: every pixel is an instance (as in the authors' segmentation
    code), so the (N, C, H, W) maps become matrices ``Y`` of shape (P, C) over the P pixels kept.

    ``Y^s = softmax(Z^s / T)``, ``Y^t = softmax(Z^t / T)`` row-wise (over the C classes);
    ``inter = 1 - (1/P) sum_i rho(Y^s_{i,:}, Y^t_{i,:})`` (inter-class relation: each pixel's
    class ranking), ``intra = 1 - (1/C) sum_c rho(Y^s_{:,c}, Y^t_{:,c})`` (intra-class relation:
    how one class's probability varies over the pixels), with rho the Pearson correlation
    (`pearson_rows`);
    ``DIST = T^2 * (beta * inter + gamma * intra)``.

    The pixels kept are all of them, or the non-ignored ones when `target` is given; with none
    kept the loss is 0 (still in the graph). Both logits must have the same shape.
    """
    _check_pair(student_logits, teacher_logits, "logits")
    _check_temperature(temperature)
    if beta < 0 or gamma < 0:
        raise ValueError(f"beta and gamma must be >= 0, got beta={beta}, gamma={gamma}")
    c = teacher_logits.shape[1]
    ys = F.softmax(student_logits / temperature, dim=1).permute(0, 2, 3, 1).reshape(-1, c)
    yt = F.softmax(teacher_logits / temperature, dim=1).permute(0, 2, 3, 1).reshape(-1, c)
    if target is not None:
        keep = valid_mask(target, teacher_logits, ignore_index, check_classes=False).reshape(-1)
        ys, yt = ys[keep], yt[keep]
    if ys.shape[0] == 0:
        return student_logits.sum() * 0.0
    inter = 1 - pearson_rows(ys, yt).mean()
    intra = 1 - pearson_rows(ys.t(), yt.t()).mean()
    return temperature**2 * (beta * inter + gamma * intra)
