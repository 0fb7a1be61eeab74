"""What the profiler's stages report to Weights & Biases: the `profile` and `size` runs of an
experiment, `distillery profile --wandb-mode ...`, and the experiment's comparison table. (It
sits above both the profiler and the tracker, which do not import each other.)

Every run is a `distillery.tracking.Tracker` (same modes, caps, offline fallback and group as the
training stages' runs); each function returns the run's ``{"id", "url", "dir"}``, or None when
tracking is disabled.

A profile run (job type ``profile``), per model `M` (``teacher``/``student`` in a stage, the
``--model`` or ``model`` from the CLI), variant `V` (e.g. ``eager+fp32``) and batch size `B`:

- config: ``device`` (DeviceInfo), ``driver_version``, ``cuda_version``, ``torch_version``,
  ``onnxruntime_version``, ``threads``, ``input_size``, ``precision``, ``variants``,
  ``batch_sizes``, ``measurement`` (warm-up, repeats, target cv, time cap), ``models`` (per `M`:
  arch, width, params, FLOPs) and, for a stage, the experiment spec;
- summary: ``M/V/bB/{p50_ms,p90_ms,p99_ms,images_per_s,gflops_per_s,fraction_of_peak,
  peak_memory_mb,stable,status}``, ``M/fastest/bB/{variant,p50_ms}``,
  ``M/{params,gflops_per_image,weights_mb,busy}``, ``M/budget/{verdict,budget_ms,measured_ms,
  margin_ms,margin_pct,variant,stable,passed}`` (with a latency budget);
- tables: ``grid`` (every model x variant x batch size row, the fastest per batch marked) and,
  when the CLI sized an ``auto`` student first, ``width_search``.

A size run (job type ``size``): config as above for the searched variant plus ``budget_ms``,
``statistic``, ``batch_size``, ``auto_widths``; summary ``chosen_width``, ``chosen_depth``,
``budget/{verdict,budget_ms,statistic,measured_ms,margin_ms,margin_pct}``,
``width/W/{status,latency_ms,p50_ms,p90_ms,stable,fits,margin_ms}``; table ``width_search``.
A search that finds no width is logged too, as a failed run.

The comparison run (job type ``comparison``, once per succeeded experiment): table
``comparison`` (teacher, baseline and distilled student: mIoU, params, GFLOPs, latency), summary
``gap_closed``, ``student_width``, ``<stage>/{miou,params,gflops,latency_ms}``,
``budget/{verdict,margin_ms}``.

The report run (job type ``report``, the `report` stage): the same ``comparison`` table and
summary, plus the report's plots as images ``report/<plot>`` (``per_class_iou``, ``pareto``,
``samples``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from distillery.profiler.device import DeviceInfo
from distillery.profiler.report import ProfileReport, ProfileRow, WidthCandidate, WidthSearch
from distillery.spec import ExperimentSpec, ProfilingSpec, TrackingSpec
from distillery.tracking import Tracker

GRID_COLUMNS = [
    "model",
    "variant",
    "runtime",
    "precision",
    "batch_size",
    "status",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "mean_ms",
    "cv",
    "stable",
    "images_per_s",
    "gflops_per_s",
    "fraction_of_peak",
    "peak_memory_mb",
    "fastest",
    "note",
]
WIDTH_COLUMNS = [
    "width",
    "depth",
    "params",
    "gflops_per_image",
    "status",
    "latency_ms",
    "p50_ms",
    "p90_ms",
    "cv",
    "stable",
    "verdict",
    "margin_ms",
    "chosen",
    "note",
]
COMPARISON_COLUMNS = [
    "stage",
    "model",
    "miou",
    "pixel_accuracy",
    "gain_over_baseline",
    "params",
    "gflops",
    "latency_ms",
    "latency_at",
]
#: Per-row summary values: summary name -> ProfileRow attribute (latency percentiles apart).
_ROW_VALUES = {
    "images_per_s": "images_per_s",
    "gflops_per_s": "gflops_per_s",
    "fraction_of_peak": "fraction_of_peak",
    "peak_memory_mb": "peak_memory_mb",
    "stable": "stable",
    "status": "status",
}


# ------------------------------------------------------------------------------------ runs


def log_profile_run(
    reports: Mapping[str, ProfileReport],
    profiling: ProfilingSpec,
    tracking: TrackingSpec,
    run_dir: Path,
    *,
    name: str,
    group: str,
    spec: ExperimentSpec | None = None,
) -> dict[str, Any] | None:
    """Log one run for the `reports` (model name -> report, measured on one device): config,
    per-row summary, budget verdicts and the ``grid`` table. `spec` (a stage's experiment) goes
    into the config like the training stages' runs."""
    if not reports:
        raise ValueError("log_profile_run: no reports to log")
    first = next(iter(reports.values()))
    config = _base_config("profile", spec) | _device_config(first.device)
    config |= {
        "input_size": list(first.input_size),
        "precision": profiling.precision,
        "variants": first.variants,
        "batch_sizes": first.batch_sizes,
        "measurement": first.settings,
        "models": {m: r.model.model_dump(mode="json") for m, r in reports.items()},
    }
    if spec is None:
        config["profiling"] = profiling.model_dump(mode="json")
    tracker = Tracker(tracking, run_dir, name=name, group=group, config=config, job_type="profile")
    with tracker:
        summary: dict[str, Any] = {}
        grid: list[list[Any]] = []
        for model, report in reports.items():
            summary |= profile_summary(model, report)
            grid += [grid_row(model, row) for row in report.rows]
        tracker.summary(summary)
        tracker.log_table("grid", GRID_COLUMNS, grid)
        search = next((r.width_search for r in reports.values() if r.width_search), None)
        if search is not None:
            tracker.summary(width_search_summary(search))
            tracker.log_table("width_search", WIDTH_COLUMNS, width_rows(search))
    return tracker.info


def log_size_run(
    search: WidthSearch,
    spec: ExperimentSpec,
    run_dir: Path,
    *,
    group: str,
    failed: bool = False,
) -> dict[str, Any] | None:
    """Log the `size` stage's width search: each candidate's latency and verdict, the chosen
    width; `failed` (no width fits the budget) marks the run failed."""
    config = _base_config("size", spec) | _device_config(search.device)
    config |= {
        "input_size": list(search.input_size),
        "precision": search.precision,
        "variant": search.variant,
        "batch_size": search.batch_size,
        "budget_ms": search.budget_ms,
        "statistic": search.statistic,
        "auto_widths": [c.width for c in search.candidates],
    }
    tracker = Tracker(
        spec.tracking,
        run_dir,
        name=f"{spec.name}-size",
        group=group,
        config=config,
        job_type="size",
    )
    try:
        tracker.summary(width_search_summary(search))
        tracker.log_table("width_search", WIDTH_COLUMNS, width_rows(search))
    except BaseException:
        tracker.finish(exit_code=1)
        raise
    tracker.finish(exit_code=1 if failed else None)
    return tracker.info


def log_comparison(
    results: Mapping[str, Any],
    spec: ExperimentSpec,
    run_dir: Path,
    *,
    group: str,
    job_type: str = "comparison",
    plots: Sequence[Path] = (),
) -> dict[str, Any] | None:
    """Log the experiment's comparison (`distillery.stages.results.build_results`) as the
    ``comparison`` table, so wandb can plot mIoU against latency across a group's models, and
    `plots` as images ``report/<file stem>`` (the `report` stage: ``job_type="report"``)."""
    rows = list(results.get("rows") or [])
    tracker = Tracker(
        spec.tracking,
        run_dir,
        name=f"{spec.name}-{job_type}",
        group=group,
        config=_base_config(job_type, spec),
        job_type=job_type,
    )
    with tracker:
        summary: dict[str, Any] = {
            "gap_closed": results.get("gap_closed"),
            "student_width": results.get("student_width"),
        }
        for r in rows:
            for k in ("miou", "params", "gflops", "latency_ms"):
                summary[f"{r['stage']}/{k}"] = r.get(k)
        budget = results.get("budget") or {}
        summary["budget/verdict"] = budget.get("verdict")
        summary["budget/margin_ms"] = budget.get("margin_ms")
        tracker.summary(_present(summary))
        tracker.log_table(
            "comparison", COMPARISON_COLUMNS, [[r.get(c) for c in COMPARISON_COLUMNS] for r in rows]
        )
        tracker.log_pngs("report", list(plots))
    return tracker.info


# ------------------------------------------------------------------------------- contents


def profile_summary(model: str, report: ProfileReport) -> dict[str, Any]:
    """The summary values of one model's report (keys prefixed ``<model>/``, Nones dropped)."""
    out: dict[str, Any] = {
        f"{model}/params": report.model.params,
        f"{model}/gflops_per_image": report.model.flops_per_image / 1e9,
        f"{model}/weights_mb": report.model.weights_mb,
        f"{model}/busy": report.busy,
    }
    for row in report.rows:
        key = f"{model}/{row.variant}/b{row.batch_size}"
        if row.latency_ms is not None:
            lat = row.latency_ms
            out |= {f"{key}/p50_ms": lat.p50, f"{key}/p90_ms": lat.p90, f"{key}/p99_ms": lat.p99}
        out |= {f"{key}/{k}": getattr(row, attr) for k, attr in _ROW_VALUES.items()}
    for f in report.fastest:
        out[f"{model}/fastest/b{f.batch_size}/variant"] = f.variant
        out[f"{model}/fastest/b{f.batch_size}/p50_ms"] = f.p50_ms
    if report.budget is not None:
        b = report.budget
        for k in ("verdict", "budget_ms", "measured_ms", "margin_ms", "margin_pct", "variant"):
            out[f"{model}/budget/{k}"] = getattr(b, k)
        out[f"{model}/budget/stable"] = b.stable
        out[f"{model}/budget/passed"] = b.passed
    return _present(out)


def grid_row(model: str, row: ProfileRow) -> list[Any]:
    """One ``grid`` table row (GRID_COLUMNS order); `fastest` is ``★`` on the fastest `ok` row of
    its batch size."""
    lat = row.latency_ms
    values = {
        "model": model,
        "variant": row.variant,
        "runtime": row.runtime,
        "precision": row.precision,
        "batch_size": row.batch_size,
        "status": row.status,
        "p50_ms": lat.p50 if lat else None,
        "p90_ms": lat.p90 if lat else None,
        "p99_ms": lat.p99 if lat else None,
        "mean_ms": lat.mean if lat else None,
        "cv": lat.cv if lat else None,
        "stable": row.stable,
        "images_per_s": row.images_per_s,
        "gflops_per_s": row.gflops_per_s,
        "fraction_of_peak": row.fraction_of_peak,
        "peak_memory_mb": row.peak_memory_mb,
        "fastest": "★" if row.fastest else "",
        "note": row.note,
    }
    return [values[c] for c in GRID_COLUMNS]


def width_verdict(c: WidthCandidate) -> str:
    """``pass`` / ``fail`` for a measured candidate, else its status (``skipped``, ``failed``)."""
    if c.status != "measured":
        return c.status
    return "pass" if c.fits else "fail"


def width_rows(search: WidthSearch) -> list[list[Any]]:
    """The ``width_search`` table rows (WIDTH_COLUMNS order), narrowest first."""
    rows = []
    for c in search.candidates:
        values = c.model_dump() | {
            "gflops_per_image": c.flops_per_image / 1e9,
            "verdict": width_verdict(c),
            "chosen": c.width == search.chosen_width,
        }
        rows.append([values[k] for k in WIDTH_COLUMNS])
    return rows


def width_search_summary(search: WidthSearch) -> dict[str, Any]:
    """Chosen width, the budget verdict and margin (of the chosen width, or of the narrowest when
    none fits) and each candidate's figures under ``width/<w>/``."""
    chosen = next((c for c in search.candidates if c.width == search.chosen_width), None)
    judged = chosen or (search.candidates[0] if search.candidates else None)
    out: dict[str, Any] = {
        "chosen_width": search.chosen_width,
        "chosen_depth": search.chosen_depth,
        "budget/verdict": "pass" if chosen is not None else "fail",
        "budget/budget_ms": search.budget_ms,
        "budget/statistic": search.statistic,
    }
    if judged is not None and judged.latency_ms is not None:
        out["budget/measured_ms"] = judged.latency_ms
        out["budget/margin_ms"] = judged.margin_ms
        out["budget/margin_pct"] = 100 * (judged.margin_ms or 0.0) / search.budget_ms
    for c in search.candidates:
        for k in ("status", "latency_ms", "p50_ms", "p90_ms", "stable", "fits", "margin_ms"):
            out[f"width/{c.width}/{k}"] = getattr(c, k)
    return _present(out)


# -------------------------------------------------------------------------------- helpers


def _base_config(stage: str, spec: ExperimentSpec | None) -> dict[str, Any]:
    """``{"stage", **spec}``: what the training stages' runs hold as config."""
    return {"stage": stage, **(spec.model_dump(mode="json") if spec is not None else {})}


def _device_config(device: DeviceInfo) -> dict[str, Any]:
    return {
        "device": device.model_dump(mode="json"),
        "driver_version": device.driver_version,
        "cuda_version": device.cuda_version,
        "torch_version": device.torch_version,
        "onnxruntime_version": device.onnxruntime_version,
        "threads": device.num_threads,
    }


def _present(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}
