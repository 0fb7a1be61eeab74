"""The experiment table keeps the teacher's row (and the gap closed) when the teacher was reused."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from distillery.stages.results import build_results


@dataclass
class _Stage:
    name: str
    result: dict[str, Any] | None


def test_a_reused_teacher_keeps_its_row_and_the_gap_closed() -> None:
    stages = [
        _Stage("student", {"metrics": {"miou": 0.20}, "params": 10}),
        _Stage("distill", {"metrics": {"miou": 0.25, "teacher_miou": 0.30}, "params": 10}),
    ]
    out = build_results(stages)
    assert [r["stage"] for r in out["rows"]] == ["teacher", "student", "distill"]
    teacher = out["rows"][0]
    assert teacher["miou"] == 0.30 and "reused" in teacher["model"]
    assert out["gap_closed"] == pytest.approx((0.25 - 0.20) / (0.30 - 0.20))
    # with neither a teacher stage nor a score, no row
    out = build_results([_Stage("student", {"metrics": {"miou": 0.2}}), _Stage("distill", None)])
    assert [r["stage"] for r in out["rows"]] == ["student", "distill"] and out["gap_closed"] is None
