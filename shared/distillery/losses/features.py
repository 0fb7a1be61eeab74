"""Feature distillation at intermediate taps: adapted MSE (FitNets-style) and attention transfer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distillery.losses._common import check_logits, float32_loss


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


@float32_loss
def feature_mse(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """``MSE = (1 / (N C H W)) * sum (s - t)^2`` between (already adapted) student features and
    teacher features of the same shape."""
    if student_feature.shape != teacher_feature.shape:
        raise ValueError(
            f"student feature {tuple(student_feature.shape)} and teacher feature "
            f"{tuple(teacher_feature.shape)} differ in shape; adapt the student's first"
        )
    return F.mse_loss(student_feature, teacher_feature)


def attention_map(feature: Tensor, size: tuple[int, int] | torch.Size | None = None) -> Tensor:
    """Spatial attention of Zagoruyko & Komodakis (p = 2), (N, H*W), unit L2 norm per image:
    ``A = normalise(vec(mean_c F_c^2))``; resized bilinearly to `size` before normalising."""
    check_logits(feature, "feature")
    a = feature.float().pow(2).mean(1, keepdim=True)
    if size is not None:
        a = resize_to(a, size)
    return F.normalize(a.flatten(1), p=2, dim=1)


@float32_loss
def attention_transfer(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017), as in their reference code:
    ``AT = (1 / (N * H_t W_t)) * sum_n || A_s(n) - A_t(n) ||_2^2``, with `attention_map`, the
    student's map resized to the teacher's H_t x W_t. Channel counts may differ (no adapter).
    """
    check_logits(student_feature, "student feature")
    check_logits(teacher_feature, "teacher feature")
    if student_feature.shape[0] != teacher_feature.shape[0]:
        raise ValueError(
            f"batch sizes differ: student {student_feature.shape[0]}, "
            f"teacher {teacher_feature.shape[0]}"
        )
    size = teacher_feature.shape[-2:]
    return (attention_map(student_feature, size) - attention_map(teacher_feature)).pow(2).mean()
