"""The LR scheduler of a training stage, from a schedule registered in `distillery.schedules`."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from distillery.schedules import SCHEDULES


def build_scheduler(
    optimizer: Optimizer, name: str, total_steps: int, warmup_steps: int = 0, power: float = 0.9
) -> LambdaLR:
    fn = SCHEDULES.get(name)
    return LambdaLR(optimizer, lambda step: fn(step, total_steps, warmup_steps, power))
