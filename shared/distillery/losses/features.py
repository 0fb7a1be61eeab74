"""Feature distillation at intermediate taps: adapted MSE (FitNets-style) and attention transfer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distillery.losses._common import check_logits, float32_loss, masked_mean


def resize_to(x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Bilinear resize of an (N, C, H, W) map to `size` (H, W); a no-op when already that size."""
    size = tuple(size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class FeatureAdapter(nn.Module):
    """A learned 1x1 convolution mapping student channels to teacher channels, then a bilinear
    resize to the teacher's spatial size (if different)."""

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.student_channels, self.teacher_channels = student_channels, teacher_channels
        self.proj = nn.Conv2d(student_channels, teacher_channels, kernel_size=1)

    def forward(self, x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.student_channels:
            raise ValueError(
                f"adapter expects (N, {self.student_channels}, H, W) student features, "
                f"got {tuple(x.shape)}"
            )
        return resize_to(self.proj(x.to(self.proj.weight.dtype)), size)


def valid_fraction(target: Tensor, size: tuple[int, int] | torch.Size, ignore_index: int) -> Tensor:
    """(N, h, w) float: the fraction of labelled pixels (label != `ignore_index`) under each cell
    of a feature map of `size` (h, w) (an area average of the valid mask). Ignored pixels and the
    255-padded border of a crop weigh 0 in the feature terms."""
    valid = (target != ignore_index).float().unsqueeze(1)
    return F.interpolate(valid, size=tuple(size), mode="area").squeeze(1)


def _check_weight(weight: Tensor, feature: Tensor) -> None:
    n, _, h, w = feature.shape
    if weight.shape != (n, h, w):
        raise ValueError(f"weight must be ({n}, {h}, {w}) for features {tuple(feature.shape)}")


@float32_loss
def feature_mse(
    student_feature: Tensor, teacher_feature: Tensor, weight: Tensor | None = None
) -> Tensor:
    """``MSE = sum_{n,c,h,w} w_{nhw} (s - t)^2 / (C * sum_{n,h,w} w_{nhw})`` between (already
    adapted) student features and teacher features of the same shape; `weight` w (N, H, W)
    defaults to 1 (the plain mean) and is `valid_fraction` in training. 0 when sum w = 0."""
    if student_feature.shape != teacher_feature.shape:
        raise ValueError(
            f"student feature {tuple(student_feature.shape)} and teacher feature "
            f"{tuple(teacher_feature.shape)} differ in shape; adapt the student's first"
        )
    if weight is None:
        return F.mse_loss(student_feature, teacher_feature)
    _check_weight(weight, teacher_feature)
    per_cell = (student_feature - teacher_feature).pow(2).mean(1)
    return masked_mean(per_cell, None, weight)


def attention_map(
    feature: Tensor,
    size: tuple[int, int] | torch.Size | None = None,
    weight: Tensor | None = None,
) -> Tensor:
    """Spatial attention of Zagoruyko & Komodakis (p = 2), (N, H*W), unit L2 norm per image:
    ``A = normalise(vec(w * mean_c F_c^2))``; resized bilinearly to `size` before the weight
    `w` (N, H, W; default 1) and the normalisation."""
    check_logits(feature, "feature")
    a = feature.float().pow(2).mean(1, keepdim=True)
    if size is not None:
        a = resize_to(a, size)
    if weight is not None:
        a = a * weight.unsqueeze(1)
    return F.normalize(a.flatten(1), p=2, dim=1)


@float32_loss
def attention_transfer(
    student_feature: Tensor, teacher_feature: Tensor, weight: Tensor | None = None
) -> Tensor:
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017), as in their reference code:
    ``AT = (1 / (N * H_t W_t)) * sum_n || A_s(n) - A_t(n) ||_2^2``, with `attention_map`, the
    student's map resized to the teacher's H_t x W_t, both weighted by `weight` (N, H_t, W_t;
    `valid_fraction` in training, so ignored pixels take no attention). Channel counts may
    differ (no adapter).
    """
    check_logits(student_feature, "student feature")
    check_logits(teacher_feature, "teacher feature")
    if student_feature.shape[0] != teacher_feature.shape[0]:
        raise ValueError(
            f"batch sizes differ: student {student_feature.shape[0]}, "
            f"teacher {teacher_feature.shape[0]}"
        )
    if weight is not None:
        _check_weight(weight, teacher_feature)
    size = teacher_feature.shape[-2:]
    a_s = attention_map(student_feature, size, weight)
    return (a_s - attention_map(teacher_feature, weight=weight)).pow(2).mean()
