"""The profile stage of an experiment: what the profiler worker and `distillery profile` call."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from torch import nn

from distillery.models import build_model
from distillery.models.checkpoint import load_model_checkpoint
from distillery.profiler.budget import resolve_auto_width
from distillery.profiler.profile import profile_model
from distillery.profiler.report import ProfileReport
from distillery.spec import ExperimentSpec, ProfilingSpec


def spec_model(
    spec: ExperimentSpec,
    which: Literal["student", "teacher"] = "student",
    *,
    device: str | None = None,
) -> tuple[nn.Module, str, ExperimentSpec, object]:
    """(model, source, spec with an `auto` width resolved, width search or None)."""
    search = None
    if which == "student":
        spec, search = resolve_auto_width(spec, device=device)
    stage = spec.student if which == "student" else spec.teacher
    return build_model(stage.model), f"spec:{which}", spec, search


def profile_experiment(
    spec: ExperimentSpec,
    *,
    which: Literal["student", "teacher"] = "student",
    checkpoint: str | Path | None = None,
    device: str | None = None,
    **overrides: object,
) -> ProfileReport:
    """Profile an experiment's model with its `profiling` settings.

    With `checkpoint` (an exported model, see `distillery.models.checkpoint`) that model is
    profiled; otherwise the architecture the spec names (a student of width `auto` is sized by
    the width search first, and the search is part of the report). `overrides` go to
    `profile_model` (batch_sizes, variants, input_size).
    """
    search = None
    if checkpoint is not None:
        model, _ = load_model_checkpoint(checkpoint)
        source = str(checkpoint)
    else:
        model, source, spec, search = spec_model(spec, which, device=device)
    report = profile_model(model, spec.profiling, device=device, source=source, **overrides)  # type: ignore[arg-type]
    report.width_search = search  # type: ignore[assignment]
    return report


def profile_checkpoint(
    path: str | Path,
    spec: ProfilingSpec | None = None,
    *,
    device: str | None = None,
    **overrides: object,
) -> ProfileReport:
    """Profile an exported model file with `spec` (default ProfilingSpec()) settings."""
    model, _ = load_model_checkpoint(path)
    return profile_model(model, spec, device=device, source=str(path), **overrides)  # type: ignore[arg-type]
