"""Training steps that do not log never read a value back from the device: no
``Tensor.item/tolist/__bool__/__int__`` between one batch and the next (counted on the CPU,
where each of them would be a host-device sync on a GPU)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from distillery.training import StageHooks, run_stage

READS = ("item", "tolist", "__bool__", "__int__")
FEATURE = {"student_tap": "bottleneck", "teacher_tap": "bottleneck"}


def _record(monkeypatch: pytest.MonkeyPatch, events: list[str]) -> None:
    """Count the reads, except torch.optim's of its step counters: torch keeps those on the
    host even on a GPU (``state["step"]`` is a CPU tensor unless ``capturable``)."""
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self: torch.Tensor, *a: Any, _f: Any = original, _n: str = name, **k: Any):
            if f"torch{os.sep}optim{os.sep}" not in sys._getframe(1).f_code.co_filename:
                events.append(_n)
            return _f(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)


def _non_logging_windows(events: list[str]) -> list[list[str]]:
    """What happened from each batch to the next, for the first two steps (of 3, logging at 3)."""
    starts = [i for i, e in enumerate(events) if e == "batch"]
    assert len(starts) == 3, events
    return [events[starts[0] + 1 : starts[1]], events[starts[1] + 1 : starts[2]]]


@pytest.mark.parametrize(
    ("stage", "overrides"),
    [
        (
            "student",
            {
                "student": {
                    "losses": [
                        {"kind": "cross_entropy", "label_smoothing": 0.1},
                        {"kind": "focal"},
                        {"kind": "ohem", "threshold": 0.5},
                        {"kind": "confidence_penalty", "weight": 0.1},
                    ]
                }
            },
        ),
        (
            "distill",
            {
                "distillation": {
                    "losses": [
                        {"kind": "cross_entropy"},
                        {"kind": "logit_kd"},
                        {"kind": "dist"},
                        {"kind": "channel_wise_kd", "tap": "bottleneck"},
                        {"kind": "feature_mse", **FEATURE},
                        {"kind": "attention_transfer", **FEATURE},
                    ]
                }
            },
        ),
    ],
)
def test_non_logging_steps_do_not_sync(
    stage: str, overrides: dict, make_spec, teacher_model: Path, tmp_path: Path, monkeypatch
) -> None:
    train = {"epochs": 1, "log_every_steps": 3, "grad_clip_norm": 1.0}
    spec = make_spec(
        data={"num_workers": 1},  # augmentation reads its random draws in a worker process
        student={"train": train, **overrides.get("student", {})},
        **{k: v for k, v in overrides.items() if k != "student"},
    )
    events: list[str] = []
    _record(monkeypatch, events)
    run_stage(
        spec,
        stage,
        tmp_path,
        teacher_path=teacher_model if stage == "distill" else None,
        hooks=StageHooks(
            should_stop=lambda: events.append("batch") is not None,
            on_progress=lambda p: events.append("log"),
        ),
    )
    for window in _non_logging_windows(events):
        assert window == [], window
    assert "log" in events and any(e in READS for e in events)  # the logging step did read
