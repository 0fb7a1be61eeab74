"""Shared checks and masked averaging for the losses (all computed in float32)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from functools import wraps
from typing import ParamSpec, TypeVar

import torch
from torch import Tensor

IGNORE_INDEX = 255

P = ParamSpec("P")
R = TypeVar("R")


def no_autocast(device: torch.device) -> AbstractContextManager[object]:
    """A context that turns autocast off on `device` (losses run in float32 under fp16/bf16)."""
    if device.type in ("cuda", "cpu", "xpu", "mps") and torch.amp.is_autocast_available(
        device.type
    ):
        return torch.autocast(device_type=device.type, enabled=False)
    return nullcontext()


def float32_loss(fn: Callable[P, R]) -> Callable[P, R]:
    """Run a loss with autocast off and every floating-point tensor argument cast to float32."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        device = next(
            (a.device for a in (*args, *kwargs.values()) if isinstance(a, Tensor)),
            torch.device("cpu"),
        )

        def up(a: object) -> object:
            return a.float() if isinstance(a, Tensor) and a.is_floating_point() else a

        with no_autocast(device):
            return fn(*(up(a) for a in args), **{k: up(v) for k, v in kwargs.items()})  # type: ignore[arg-type]

    return wrapper


def check_logits(logits: Tensor, name: str = "logits") -> None:
    if logits.dim() != 4:
        raise ValueError(f"{name} must be (N, C, H, W), got shape {tuple(logits.shape)}")


def valid_mask(
    target: Tensor, logits: Tensor, ignore_index: int = IGNORE_INDEX, check_classes: bool = True
) -> Tensor:
    """(N, H, W) bool mask of the pixels whose label is not `ignore_index`.

    Checks that `target` is an integer (N, H, W) map matching the logits' batch and spatial size
    and, if `check_classes`, that every non-ignored label is a class index in [0, C).
    """
    check_logits(logits)
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")
    n, c, h, w = logits.shape
    if target.shape != (n, h, w):
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}: "
            f"expected ({n}, {h}, {w})"
        )
    valid = target != ignore_index
    if check_classes:
        bad = valid & ((target < 0) | (target >= c))
        if bool(bad.any()):
            values = sorted({int(v) for v in target[bad].unique()[:10]})
            raise ValueError(
                f"target holds labels {values} outside [0, {c}) that are not the ignore index "
                f"{ignore_index}"
            )
    return valid


def safe_labels(target: Tensor, valid: Tensor) -> Tensor:
    """Labels as int64 with ignored pixels set to class 0 (a valid index for gathers)."""
    return torch.where(valid, target.long(), target.new_zeros((), dtype=torch.long))


def masked_mean(values: Tensor, mask: Tensor | None, weights: Tensor | None = None) -> Tensor:
    """sum(w * v over masked) / sum(w over masked); 0 (still in the graph) when nothing is kept.

    Masked-out entries are replaced (not multiplied), so inf/nan there cannot leak in.
    """
    if weights is None:
        weights = torch.ones_like(values)
    if mask is not None:
        zero = values.new_zeros(())
        values = torch.where(mask, values, zero)
        weights = torch.where(mask, weights, zero)
    return (weights * values).sum() / weights.sum().clamp_min(torch.finfo(values.dtype).tiny)
