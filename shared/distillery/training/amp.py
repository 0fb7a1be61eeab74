"""One fp16 loss-scale update per optimizer step, however many models learn (online mode).

Accelerate gives every prepared optimizer the one `GradScaler` and each
``AcceleratedOptimizer.step`` calls ``scaler.update()``: with two learners the second one's
gradients are unscaled with a scale the first step already changed, and
``accelerator.clip_grad_norm_`` unscales every optimizer, so clipping the second learner raises
``unscale_() has already been called``. Here each optimizer sees the scaler through
`SharedScaler` (its ``update`` does nothing) and `clip_and_step` unscales each learner once,
clips it, steps every optimizer and updates the scale once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import torch
from torch import nn


class _Learner(Protocol):
    optimizer: Any

    def parameters(self) -> list[nn.Parameter]: ...


class SharedScaler:
    """A `GradScaler` seen by one of several optimizers: everything but ``update`` (left to
    `clip_and_step`, once per step) goes to the scaler."""

    def __init__(self, scaler: torch.amp.GradScaler) -> None:
        self._scaler = scaler

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scaler, name)

    def update(self, new_scale: float | None = None) -> None:
        """Deferred: `clip_and_step` updates the scale once, after every optimizer stepped."""


def share_scaler(optimizers: Iterable[Any], scaler: torch.amp.GradScaler | None) -> None:
    """Give each prepared (Accelerated)optimizer the scaler through a `SharedScaler`."""
    if scaler is None:
        return
    for opt in optimizers:
        opt.scaler = SharedScaler(scaler)


def _raw(optimizer: Any) -> torch.optim.Optimizer:
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def clip_and_step(
    learners: Sequence[_Learner],
    scaler: torch.amp.GradScaler | None,
    max_norm: float | None,
) -> None:
    """For the learners updated this step: unscale each one's gradients once (fp16), clip them
    to `max_norm` (if given), step every optimizer (a skipped fp16 step is recorded by it), then
    update the loss scale once."""
    for lr in learners:
        if max_norm is not None:
            if scaler is not None:
                scaler.unscale_(_raw(lr.optimizer))
            torch.nn.utils.clip_grad_norm_(lr.parameters(), max_norm)
    for lr in learners:
        lr.optimizer.step()
    if scaler is not None:
        scaler.update()
