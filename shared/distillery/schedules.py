"""Learning-rate schedules, registered by name (torch-free: the spec checks names here). Each maps
(step, total_steps, warmup, power) to an LR factor; `training.schedules` builds the scheduler."""

from __future__ import annotations

from collections.abc import Callable

from distillery.registry import Registry

ScheduleFn = Callable[[int, int, int, float], float]
SCHEDULES: Registry[ScheduleFn] = Registry("schedule")


def _warmup(step: int, warmup: int) -> float:
    return (step + 1) / warmup if step < warmup else 1.0


@SCHEDULES.register("poly")
def poly(step: int, total: int, warmup: int, power: float) -> float:
    """lr = base * (1 - step / total) ** power, after a linear warm-up (segmentation's default)."""
    if step < warmup:
        return _warmup(step, warmup)
    return max(0.0, 1.0 - step / max(1, total)) ** power


@SCHEDULES.register("constant")
def constant(step: int, total: int, warmup: int, power: float) -> float:
    """lr = base, after a linear warm-up."""
    return _warmup(step, warmup)
