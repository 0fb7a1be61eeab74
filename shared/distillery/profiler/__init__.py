"""The profiler: latency, throughput, FLOPs, memory and fraction of the device's peak per
variant (eager, channels_last, torch.compile, ONNX Runtime; fp32/bf16/fp16) and batch size,
latency budgets, and the width search for `student.model.width: auto`.

>>> report = profile_model(model, spec.profiling, batch_sizes=[1, 4])
>>> rich.print(format_report(report)); Path("report.md").write_text(report_markdown(report))

Importing the package imports no torch: each name is imported from its module when first used
(the spec validates variant names through `distillery.profiler.variants` without torch).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BudgetNotMetError": "distillery.profiler.budget",
    "BudgetVerdict": "distillery.profiler.report",
    "DeviceError": "distillery.profiler.device",
    "DeviceInfo": "distillery.profiler.device",
    "LatencyStats": "distillery.profiler.timing",
    "ModelInfo": "distillery.profiler.report",
    "ProfileReport": "distillery.profiler.report",
    "ProfileRow": "distillery.profiler.report",
    "Variant": "distillery.profiler.variants",
    "WidthCandidate": "distillery.profiler.report",
    "WidthSearch": "distillery.profiler.report",
    "budget_verdict": "distillery.profiler.budget",
    "check_input_size": "distillery.profiler.profile",
    "describe_device": "distillery.profiler.device",
    "format_report": "distillery.profiler.format",
    "format_width_search": "distillery.profiler.format",
    "matmul_peak": "distillery.profiler.peak",
    "measure_latency": "distillery.profiler.timing",
    "model_flops": "distillery.profiler.profile",
    "model_info": "distillery.profiler.profile",
    "parse_variant": "distillery.profiler.variants",
    "parse_variants": "distillery.profiler.variants",
    "profile_checkpoint": "distillery.profiler.experiment",
    "profile_experiment": "distillery.profiler.experiment",
    "profile_model": "distillery.profiler.profile",
    "report_markdown": "distillery.profiler.format",
    "resolve_auto_width": "distillery.profiler.budget",
    "resolve_device": "distillery.profiler.device",
    "search_student_width": "distillery.profiler.budget",
    "width_search_markdown": "distillery.profiler.format",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'distillery.profiler' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
