"""Output entropy: a metric (`mean_entropy`) and a teacher loss rewarding it (`confidence_penalty`).

A teacher whose softmax is less peaked carries more "dark knowledge" about class similarity;
the confidence penalty (Pereyra et al. 2017) trades a little accuracy for that.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from distillery.losses._common import (
    IGNORE_INDEX,
    check_logits,
    float32_loss,
    masked_mean,
    valid_mask,
)


def pixel_entropy(logits: Tensor) -> Tensor:
    """(N, H, W) entropy in nats of softmax over dim 1: ``H_i = -sum_c p_{i,c} log p_{i,c}``."""
    check_logits(logits)
    log_probs = F.log_softmax(logits.float(), dim=1)
    return -(log_probs.exp() * log_probs).sum(1)


@float32_loss
def mean_entropy(
    logits: Tensor, target: Tensor | None = None, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """Mean per-pixel entropy of the softmax, in nats (0 = one-hot, log C = uniform).

    ``mean_entropy = (1 / |V|) * sum_{i in V} -sum_c p_{i,c} log p_{i,c}``, V = all pixels, or
    the pixels whose label is not `ignore_index` when `target` is given (0 if V is empty).
    Differentiable; detach it to log it as a metric. Label values are not read (no check, no
    host-device sync): only whether a pixel is ignored.
    """
    entropy = pixel_entropy(logits)
    mask = None if target is None else valid_mask(target, logits, ignore_index, False)
    return masked_mean(entropy, mask)


def confidence_penalty(
    logits: Tensor, target: Tensor | None = None, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """Confidence penalty: ``loss = -mean_entropy(logits, target)`` (minimising it raises the
    entropy). The term's `weight` is the beta of Pereyra et al.: the objective adds
    ``-beta * mean_entropy``.
    """
    return -mean_entropy(logits, target, ignore_index)
