"""The profiler: latency, throughput, FLOPs, memory and fraction of the device's peak per
variant (eager, channels_last, torch.compile, ONNX Runtime; fp32/bf16/fp16) and batch size,
latency budgets, and the width search for `student.model.width: auto`.

>>> report = profile_model(model, spec.profiling, batch_sizes=[1, 4])
>>> rich.print(format_report(report)); Path("report.md").write_text(report_markdown(report))
"""

from distillery.profiler.budget import (
    BudgetNotMetError,
    budget_verdict,
    resolve_auto_width,
    search_student_width,
)
from distillery.profiler.device import DeviceError, DeviceInfo, describe_device, resolve_device
from distillery.profiler.experiment import profile_checkpoint, profile_experiment
from distillery.profiler.format import (
    format_report,
    format_width_search,
    report_markdown,
    width_search_markdown,
)
from distillery.profiler.peak import matmul_peak
from distillery.profiler.profile import check_input_size, model_flops, model_info, profile_model
from distillery.profiler.report import (
    BudgetVerdict,
    ModelInfo,
    ProfileReport,
    ProfileRow,
    WidthCandidate,
    WidthSearch,
)
from distillery.profiler.timing import LatencyStats, measure_latency
from distillery.profiler.variants import Variant, parse_variant, parse_variants

__all__ = [
    "BudgetNotMetError",
    "BudgetVerdict",
    "DeviceError",
    "DeviceInfo",
    "LatencyStats",
    "ModelInfo",
    "ProfileReport",
    "ProfileRow",
    "Variant",
    "WidthCandidate",
    "WidthSearch",
    "budget_verdict",
    "check_input_size",
    "describe_device",
    "format_report",
    "format_width_search",
    "matmul_peak",
    "measure_latency",
    "model_flops",
    "model_info",
    "parse_variant",
    "parse_variants",
    "profile_checkpoint",
    "profile_experiment",
    "profile_model",
    "report_markdown",
    "resolve_auto_width",
    "resolve_device",
    "search_student_width",
    "width_search_markdown",
]
