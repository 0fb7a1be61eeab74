"""Latency budgets: the verdict, and the width search for `student.model.width: auto`."""

from __future__ import annotations

import math

import pytest

from distillery.models import UNet
from distillery.profiler import (
    BudgetNotMetError,
    format_width_search,
    profile_model,
    resolve_auto_width,
    search_student_width,
    width_search_markdown,
)
from distillery.spec import ExperimentSpec, ProfilingSpec

SIZE = (64, 128)
SETTINGS = dict(warmup=1, min_repeats=10, max_repeats=15, target_cv=0.05, max_time_s=3)


def experiment(budget_ms: float, widths: list[int]) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {
            "name": "budget-test",
            "data": {
                "train": [{"format": "cityscapes", "root": "/nowhere"}],
                "val": [{"format": "cityscapes", "root": "/nowhere"}],
            },
            "student": {"model": {"width": "auto", "depth": 2}},
            "profiling": {
                "input_size": list(SIZE),
                "latency_budget_ms": budget_ms,
                "auto_widths": widths,
                "device": "cpu",
                **SETTINGS,
            },
        }
    )


def p50(width: int) -> float:
    report = profile_model(
        UNet(width=width, depth=2), ProfilingSpec(input_size=SIZE, **SETTINGS), device="cpu"
    )
    return report.rows[0].latency_ms.p50


def test_verdict_pass_and_fail_with_margins(conv_stack):
    model = conv_stack(2, 16)
    spec = ProfilingSpec(input_size=(32, 64), batch_sizes=[2], latency_budget_ms=10_000, **SETTINGS)
    ok = profile_model(model, spec, device="cpu").budget
    assert ok.verdict == "pass" and ok.passed and ok.batch_size == 1
    assert ok.margin_ms == pytest.approx(10_000 - ok.measured_ms)
    assert 99 < ok.margin_pct <= 100
    tight = spec.model_copy(update={"latency_budget_ms": 1e-3, "budget_statistic": "p90"})
    bad = profile_model(model, tight, device="cpu").budget
    assert bad.verdict == "fail" and not bad.passed and bad.statistic == "p90"
    assert bad.margin_ms == pytest.approx(1e-3 - bad.measured_ms) and bad.margin_ms < 0
    assert bad.margin_pct < -1000


def test_verdict_not_measured_at_another_input_size(conv_stack):
    spec = ProfilingSpec(input_size=(32, 64), latency_budget_ms=100, **SETTINGS)
    verdict = profile_model(conv_stack(1), spec, device="cpu", input_size=(16, 32)).budget
    assert verdict.verdict == "not_measured" and "32x64" in verdict.note


def test_width_search_picks_the_widest_that_fits():
    """Budget: the geometric mean of the measured latencies of widths 8 and 64 (64x the FLOPs
    apart), so 4 and 8 fit and 64 does not, with a margin of several times on both sides (more
    than the slow-down of a busy shared machine)."""
    budget = math.sqrt(p50(8) * p50(64))
    search = search_student_width(experiment(budget, [64, 4, 8]))
    assert [c.width for c in search.candidates] == [4, 8, 64]
    assert [c.fits for c in search.candidates] == [True, True, False], (budget, search)
    assert search.chosen_width == 8 and search.chosen_depth == 2
    assert search.model_dump(mode="json")["width"] == 8  # what the size stage stores
    assert all(c.status == "measured" and c.latency_ms > 0 for c in search.candidates)
    assert search.candidates[0].flops_per_image < search.candidates[2].flops_per_image
    assert format_width_search(search).row_count == 3
    assert "chose width 8" in width_search_markdown(search)


def test_resolve_auto_width_with_a_generous_budget():
    spec, search = resolve_auto_width(experiment(10_000, [4, 8]))
    assert spec.student.model.width == 8 == search.chosen_width
    same, none = resolve_auto_width(spec)
    assert same is spec and none is None


def test_no_width_fits():
    with pytest.raises(BudgetNotMetError, match=r"even the narrowest student \(width 4") as e:
        search_student_width(experiment(1e-3, [4, 8, 16]))
    search = e.value.search
    assert [c.status for c in search.candidates] == ["measured", "skipped", "skipped"]
    assert search.chosen_width is None and search.candidates[0].fits is False
