"""Distillation of output distributions: per-pixel logit KD and channel-wise KD (CWD).

Neither detaches its teacher argument: the objective does (`Objective` treats the teacher as a
constant); called directly, gradients reach whichever inputs require them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distillery.losses._common import (
    IGNORE_INDEX,
    check_logits,
    float32_loss,
    masked_mean,
    valid_mask,
)


def _check_pair(student: Tensor, teacher: Tensor, what: str) -> None:
    check_logits(student, f"student {what}")
    check_logits(teacher, f"teacher {what}")
    if student.shape != teacher.shape:
        hint = (
            "; resize the student's to the teacher's size first (the Objective does)"
            if student.shape[:2] == teacher.shape[:2]
            else ""
        )
        raise ValueError(
            f"student {what} {tuple(student.shape)} and teacher {what} {tuple(teacher.shape)} "
            f"differ in shape{hint}"
        )


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


@float32_loss
def logit_kd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float,
    target: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Pixel-wise logit distillation (Hinton et al. 2015) at temperature T.

    ``q^t_i = softmax(t_i / T)``, ``q^s_i = softmax(s_i / T)`` over the C classes of pixel i;
    ``KD = T^2 * (1 / |V|) * sum_{i in V} sum_c q^t_{i,c} (log q^t_{i,c} - log q^s_{i,c})``
    with V = all pixels, or the non-ignored ones when `target` is given (0 if V is empty).

    Both logits must have the same (N, C, H, W) shape; a spatial mismatch is a ValueError.
    """
    _check_pair(student_logits, teacher_logits, "logits")
    _check_temperature(temperature)
    mask = None
    if target is not None:
        mask = valid_mask(target, teacher_logits, ignore_index, check_classes=False)
    log_qs = F.log_softmax(student_logits / temperature, dim=1)
    log_qt = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_qs, log_qt, reduction="none", log_target=True).sum(1)
    return masked_mean(kl, mask) * temperature**2


@float32_loss
def channel_wise_kd(
    student_map: Tensor,
    teacher_map: Tensor,
    temperature: float,
    *,
    mask: Tensor | None = None,
) -> Tensor:
    """Channel-wise distillation (Shu et al., ICCV 2021) at temperature T.

    Each channel c of image n becomes a distribution over its H*W positions:
    ``phi(y)_{n,c,j} = softmax_j(y_{n,c,j} / T)``;
    ``CWD = T^2 / (N C) * sum_{n,c,j} phi(t)_{n,c,j} (log phi(t)_{n,c,j} - log phi(s)_{n,c,j})``.

    Both maps must have the same (N, C, H, W) shape. Optional `mask` (N, H, W), bool: positions
    where it is False are left out of every softmax (e.g. ignored pixels), and images with no
    position left are left out of the mean over N.
    """
    _check_pair(student_map, teacher_map, "map")
    _check_temperature(temperature)
    n, c, h, w = teacher_map.shape
    s = (student_map / temperature).reshape(n, c, h * w)
    t = (teacher_map / temperature).reshape(n, c, h * w)
    keep: Tensor | None = None
    if mask is not None:
        if mask.shape != (n, h, w) or mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be a bool ({n}, {h}, {w}) tensor, got {mask.dtype} {tuple(mask.shape)}"
            )
        keep = mask.reshape(n, 1, h * w).expand(n, c, h * w)
        low = torch.finfo(s.dtype).min
        s = torch.where(keep, s, low)
        t = torch.where(keep, t, low)
    log_ps = F.log_softmax(s, dim=2)
    log_pt = F.log_softmax(t, dim=2)
    kl = F.kl_div(log_ps, log_pt, reduction="none", log_target=True)
    if keep is None:
        return kl.sum(2).mean() * temperature**2
    kl = torch.where(keep, kl, kl.new_zeros(())).sum(2)  # (N, C)
    images = mask.reshape(n, h * w).any(1)
    return masked_mean(kl, images.unsqueeze(1).expand(n, c)) * temperature**2
