"""Latency budgets: the pass/fail verdict of a profile, and the width search for
`student.model.width: auto`.

A budget is `profiling.latency_budget_ms` for one batch of `budget_batch_size` images at
`profiling.input_size` and `profiling.precision`, compared with `budget_statistic` (median by
default) of the fastest measured variant at that batch size and precision.
"""

from __future__ import annotations

import gc

from distillery.models import build_model
from distillery.profiler.device import describe_device, resolve_device
from distillery.profiler.profile import check_input_size, measure_as_specified, model_flops
from distillery.profiler.report import BudgetVerdict, ProfileReport, WidthCandidate, WidthSearch
from distillery.profiler.runners import make_runner
from distillery.profiler.timing import LatencyStats
from distillery.profiler.variants import Variant, parse_variant, unavailable_reason
from distillery.spec import ExperimentSpec, ProfilingSpec


class BudgetNotMetError(ValueError):
    """Even the narrowest candidate width misses the latency budget; `.search` holds the rows."""

    def __init__(self, message: str, search: WidthSearch) -> None:
        super().__init__(message)
        self.search = search


def statistic(lat: LatencyStats, name: str) -> float:
    return {"p50": lat.p50, "p90": lat.p90, "p99": lat.p99, "mean": lat.mean}[name]


def budget_verdict(report: ProfileReport, spec: ProfilingSpec) -> BudgetVerdict | None:
    """Pass/fail against `spec.latency_budget_ms`, by how much; None if the spec sets no budget."""
    if spec.latency_budget_ms is None:
        return None
    budget = spec.latency_budget_ms
    common = dict(
        budget_ms=budget,
        input_size=spec.input_size,
        batch_size=spec.budget_batch_size,
        precision=spec.precision,
        statistic=spec.budget_statistic,
    )
    if tuple(report.input_size) != tuple(spec.input_size):
        return BudgetVerdict(
            verdict="not_measured",
            note=f"the budget applies at {_hw(spec.input_size)}; this profile ran at "
            f"{_hw(report.input_size)}",
            **common,
        )
    rows = [
        r
        for r in report.rows
        if r.status == "ok"
        and r.latency_ms is not None
        and r.batch_size == spec.budget_batch_size
        and r.precision == spec.precision
    ]
    if not rows:
        return BudgetVerdict(
            verdict="not_measured",
            note=f"no variant ran at batch size {spec.budget_batch_size} and {spec.precision}",
            **common,
        )
    best = min(rows, key=lambda r: statistic(r.latency_ms, spec.budget_statistic))  # type: ignore[arg-type]
    measured = statistic(best.latency_ms, spec.budget_statistic)  # type: ignore[arg-type]
    margin = budget - measured
    return BudgetVerdict(
        verdict="pass" if measured <= budget else "fail",
        variant=best.variant,
        measured_ms=measured,
        margin_ms=margin,
        margin_pct=100 * margin / budget,
        stable=best.latency_ms.stable,  # type: ignore[union-attr]
        note=None if best.latency_ms.stable else "the measurement was not stable",  # type: ignore[union-attr]
        **common,
    )


def _hw(size: tuple[int, int] | list[int]) -> str:
    return f"{size[0]}x{size[1]}"


def search_variant(spec: ProfilingSpec) -> Variant:
    """The width search times the spec's first variant's runtime at the budget's precision."""
    return Variant(parse_variant(spec.variants[0]).runtime, spec.precision)


def search_student_width(spec: ExperimentSpec, *, device: str | None = None) -> WidthSearch:
    """Try `profiling.auto_widths` (narrowest first) for the student on the profiler's device and
    choose the widest whose latency fits the budget.

    Latency grows with width, so after the first width that misses the budget the wider ones are
    recorded as `skipped`, not measured. Raises `BudgetNotMetError` (carrying the search) if even
    the narrowest misses it, and ValueError if the spec sets no budget.
    """
    prof = spec.profiling
    if prof.latency_budget_ms is None:
        raise ValueError("profiling.latency_budget_ms: the width search needs a latency budget")
    budget = prof.latency_budget_ms
    dev = resolve_device(device if device is not None else prof.device)
    variant = search_variant(prof)
    if (reason := unavailable_reason(variant, dev.type)) is not None:
        raise ValueError(
            f"profiling.variants[0]: the width search runs {variant.name} on {dev.type}, which is "
            f"{reason[0]}: {reason[1]}"
        )
    model_spec = spec.student.model
    candidates: list[WidthCandidate] = []
    missed = False
    for width in sorted(set(prof.auto_widths)):
        model = build_model(model_spec, width=width)
        size = check_input_size(model, prof.input_size)
        row = dict(
            width=width,
            depth=model_spec.depth,
            params=sum(p.numel() for p in model.parameters()),
            flops_per_image=model_flops(model, size),
        )
        if missed:
            candidates.append(
                WidthCandidate(
                    status="skipped", note="a narrower width already missed the budget", **row
                )
            )
            continue
        runner = make_runner(model.to(dev).eval(), variant, size, dev)
        try:
            lat = measure_as_specified(runner.prepare(prof.budget_batch_size), dev, prof)
        except Exception as e:
            candidates.append(
                WidthCandidate(status="failed", note=f"{type(e).__name__}: {e}"[:300], **row)
            )
            missed = True
            continue
        finally:
            runner.close()
            del model
            gc.collect()
        measured = statistic(lat, prof.budget_statistic)
        fits = measured <= budget
        missed = not fits
        candidates.append(
            WidthCandidate(
                status="measured",
                latency_ms=measured,
                p50_ms=lat.p50,
                p90_ms=lat.p90,
                cv=lat.cv,
                stable=lat.stable,
                fits=fits,
                margin_ms=budget - measured,
                **row,
            )
        )
    fitting = [c for c in candidates if c.fits]
    search = WidthSearch(
        budget_ms=budget,
        statistic=prof.budget_statistic,
        input_size=prof.input_size,
        batch_size=prof.budget_batch_size,
        precision=prof.precision,
        variant=variant.name,
        device=describe_device(dev),
        candidates=candidates,
        chosen_width=max(c.width for c in fitting) if fitting else None,
        chosen_depth=model_spec.depth,
    )
    if not fitting:
        first = candidates[0]
        got = f"{first.latency_ms:.2f} ms" if first.latency_ms is not None else first.note
        search.note = "no candidate width fits the budget"
        raise BudgetNotMetError(
            f"profiling.latency_budget_ms: even the narrowest student (width {first.width}, depth "
            f"{first.depth}) takes {got} ({prof.budget_statistic}, batch "
            f"{prof.budget_batch_size}, {_hw(prof.input_size)}, {variant.name}, "
            f"{search.device.name}), over the {budget:g} ms budget; raise the budget, lower "
            "profiling.input_size or student.model.depth, or add narrower profiling.auto_widths",
            search,
        )
    return search


def resolve_auto_width(
    spec: ExperimentSpec, *, device: str | None = None
) -> tuple[ExperimentSpec, WidthSearch | None]:
    """(spec with the student's `auto` width resolved, the search) — or (spec, None) if the
    width is already a number."""
    if spec.student.model.width != "auto":
        return spec, None
    search = search_student_width(spec, device=device)
    assert search.chosen_width is not None
    student = spec.student.model_copy(
        update={"model": spec.student.model.model_copy(update={"width": search.chosen_width})}
    )
    return spec.model_copy(update={"student": student}), search
