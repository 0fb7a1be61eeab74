"""fp16 with several learners (online mode): each learner is unscaled once and clipped, and the
loss scale is updated once per step (a CPU GradScaler stands in for the CUDA one)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer
from accelerate.state import AcceleratorState, GradientState
from torch import nn

from distillery.training.amp import clip_and_step, share_scaler


@dataclass
class _L:
    model: nn.Module
    optimizer: Any

    def parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters())


def _models() -> list[nn.Module]:
    torch.manual_seed(0)
    return [nn.Linear(4, 3), nn.Linear(4, 2)]


def _losses(models: list[nn.Module]) -> torch.Tensor:
    x = torch.arange(8.0).view(2, 4)
    return sum((m(x) ** 2).sum() * (i + 1) for i, m in enumerate(models))


@pytest.mark.parametrize("max_norm", [None, 0.5])
def test_two_learners_step_as_in_fp32_and_the_scale_updates_once(max_norm) -> None:
    AcceleratorState._reset_state()
    GradientState._reset_state()
    Accelerator(cpu=True)
    models = _models()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=1)
    # what `accelerator.prepare` builds under fp16 on CUDA: every optimizer holds the scaler
    opts = [
        AcceleratedOptimizer(torch.optim.SGD(m.parameters(), lr=0.1), scaler=scaler) for m in models
    ]
    share_scaler(opts, scaler)
    learners = [_L(m, o) for m, o in zip(models, opts, strict=True)]
    scaler.scale(_losses(models)).backward()
    clip_and_step(learners, scaler, max_norm)  # accelerate's own path raised or double-updated
    assert scaler.get_scale() == 2.0**9  # one growth step, not one per optimizer

    reference = _models()
    _losses(reference).backward()
    for m in reference:
        if max_norm is not None:
            torch.nn.utils.clip_grad_norm_(m.parameters(), max_norm)
        torch.optim.SGD(m.parameters(), lr=0.1).step()
    for m, r in zip(models, reference, strict=True):
        for p, q in zip(m.parameters(), r.parameters(), strict=True):
            torch.testing.assert_close(p, q)
