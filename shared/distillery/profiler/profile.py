"""`profile_model`: latency, images/s, FLOPs, memory and fraction of peak per variant and batch."""

from __future__ import annotations

import copy
import gc
import os
from collections.abc import Callable
from datetime import UTC, datetime

import torch
from torch import nn

from distillery.models.complexity import count_flops, count_parameters
from distillery.profiler.device import describe_device, resolve_device
from distillery.profiler.peak import matmul_peak
from distillery.profiler.report import (
    FastestEntry,
    ModelInfo,
    PeakInfo,
    ProfileReport,
    ProfileRow,
)
from distillery.profiler.runners import make_runner
from distillery.profiler.timing import LatencyStats, measure_latency
from distillery.profiler.variants import Variant, parse_variants, unavailable_reason
from distillery.spec import ProfilingSpec


def check_input_size(model: nn.Module, input_size: tuple[int, int]) -> tuple[int, int]:
    """A clear error for a size the model cannot take (e.g. not divisible by a UNet's 2**depth)."""
    try:
        h, w = (int(v) for v in input_size)
    except (TypeError, ValueError):
        raise ValueError(f"input_size must be (height, width), got {input_size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"input_size must be positive, got {h}x{w}")
    factor = getattr(model, "downsample_factor", None)
    if isinstance(factor, int) and (h % factor or w % factor):
        depth = getattr(model, "depth", "?")
        raise ValueError(
            f"input_size {h}x{w} is not divisible by {factor}, the downsampling factor of this "
            f"depth-{depth} {type(model).__name__}; use e.g. "
            f"{max(factor, h // factor * factor)}x{max(factor, w // factor * factor)}"
        )
    return h, w


def measure_as_specified(
    call: Callable[[], object], dev: torch.device, spec: ProfilingSpec
) -> LatencyStats:
    """`measure_latency` with `spec`'s warm-up, repeats, target CV and time cap."""
    return measure_latency(
        call,
        dev,
        warmup=spec.warmup,
        min_repeats=spec.min_repeats,
        max_repeats=spec.max_repeats,
        target_cv=spec.target_cv,
        max_time_s=spec.max_time_s,
    )


def model_flops(model: nn.Module, input_size: tuple[int, int]) -> int:
    """FLOPs of one image (torch.utils.flop_counter convention), counted on a meta-device copy so
    that no real compute runs; falls back to the real model if the copy cannot run on meta."""
    try:
        meta = copy.deepcopy(model).to("meta")
        return count_flops(meta, input_size)
    except Exception:
        return count_flops(model, input_size)


def model_info(model: nn.Module, input_size: tuple[int, int], source: str = "module") -> ModelInfo:
    from distillery.models import MODELS

    arch = next((n for n in MODELS.names() if MODELS.get(n) is type(model)), type(model).__name__)
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return ModelInfo(
        arch=arch,
        source=source,
        width=getattr(model, "width", None),
        depth=getattr(model, "depth", None),
        separable=_separable(model),
        params=count_parameters(model),
        weights_mb=round(weights / 2**20, 3),
        flops_per_image=model_flops(model, input_size),
        input_size=input_size,
    )


def _separable(model: nn.Module) -> bool | None:
    if not hasattr(model, "encoder"):
        return None
    return any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in model.modules())


def profile_model(
    model: nn.Module,
    spec: ProfilingSpec | None = None,
    *,
    device: str | None = None,
    batch_sizes: list[int] | None = None,
    variants: list[str] | str | None = None,
    input_size: tuple[int, int] | None = None,
    source: str = "module",
) -> ProfileReport:
    """Profile `model` per (variant, batch size); arguments override the spec's settings.

    The model is copied to the device and put in eval mode; the caller's module is unchanged.
    If the spec sets a latency budget, its batch size is added to the spec's batch sizes and the
    report carries a pass/fail verdict (see `distillery.profiler.budget`).
    """
    from distillery.profiler.budget import budget_verdict

    spec = spec or ProfilingSpec()
    dev = resolve_device(device if device is not None else spec.device)
    size = check_input_size(model, input_size or spec.input_size)
    if batch_sizes is None:
        batch_sizes = list(spec.batch_sizes)
        if spec.latency_budget_ms is not None and spec.budget_batch_size not in batch_sizes:
            batch_sizes.append(spec.budget_batch_size)
    batch_sizes = sorted(dict.fromkeys(int(b) for b in batch_sizes))
    if not batch_sizes or batch_sizes[0] < 1:
        raise ValueError(f"batch_sizes must be positive integers, got {batch_sizes}")
    resolved = parse_variants(variants if variants is not None else spec.variants, spec.precision)
    if variants is not None:  # the spec's checks (compile needs a warm-up) on the override
        ProfilingSpec.model_validate(spec.model_dump() | {"variants": [v.name for v in resolved]})

    info = model_info(model, size, source)
    load_before = _load_average()
    base = copy.deepcopy(model).to(dev).eval()
    peaks: dict[str, PeakInfo] = {}
    rows: list[ProfileRow] = []
    for variant in resolved:
        rows.extend(_profile_variant(base, variant, size, batch_sizes, dev, spec, info, peaks))
    del base
    gc.collect()

    fastest = _mark_fastest(rows)
    report = ProfileReport(
        device=describe_device(dev),
        model=info,
        input_size=size,
        batch_sizes=batch_sizes,
        variants=[v.name for v in resolved],
        peaks=list(peaks.values()),
        rows=rows,
        fastest=fastest,
        settings=dict(
            warmup=spec.warmup,
            min_repeats=spec.min_repeats,
            max_repeats=spec.max_repeats,
            target_cv=spec.target_cv,
            max_time_s=spec.max_time_s,
        ),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        load_average=[la for la in (load_before, _load_average()) if la is not None] or None,
    )
    report.budget = budget_verdict(report, spec)
    return report


def _profile_variant(
    base: nn.Module,
    variant: Variant,
    size: tuple[int, int],
    batch_sizes: list[int],
    dev: torch.device,
    spec: ProfilingSpec,
    info: ModelInfo,
    peaks: dict[str, PeakInfo],
) -> list[ProfileRow]:
    assert variant.precision is not None
    common = dict(
        variant=variant.name,
        runtime=variant.runtime,
        precision=variant.precision,
        input_size=size,
    )
    if (reason := unavailable_reason(variant, dev.type)) is not None:
        status, note = reason
        return [ProfileRow(batch_size=b, status=status, note=note, **common) for b in batch_sizes]
    try:
        runner = make_runner(base, variant, size, dev)
    except Exception as e:
        note = f"could not prepare the {variant.runtime} variant: {type(e).__name__}: {e}"
        return [ProfileRow(batch_size=b, status="failed", note=note, **common) for b in batch_sizes]
    rows = []
    try:
        for b in batch_sizes:
            rows.append(_measure_row(runner, b, dev, spec, info, peaks, common))
    finally:
        runner.close()
    return rows


def _measure_row(runner, b, dev, spec, info, peaks, common) -> ProfileRow:  # noqa: ANN001
    precision = common["precision"]
    try:
        call = runner.prepare(b)
        lat = measure_as_specified(call, dev, spec)
        del call
        mem, method = runner.memory(b)
    except Exception as e:
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return ProfileRow(
            batch_size=b, status="failed", note=f"{type(e).__name__}: {msg}"[:500], **common
        )
    if precision not in peaks:
        p = matmul_peak(dev, precision)
        peaks[precision] = PeakInfo(
            precision=precision,
            gflops_per_s=p.gflops_per_s,
            size=p.size,
            library=p.library,
            measured_at=p.measured_at,
        )
    seconds = lat.p50 / 1e3
    gflops = info.flops_per_image * b / seconds / 1e9
    return ProfileRow(
        batch_size=b,
        status="ok",
        note=runner.note,
        latency_ms=lat,
        images_per_s=b / seconds,
        gflops_per_s=gflops,
        fraction_of_peak=gflops / peaks[precision].gflops_per_s,
        peak_memory_mb=round(mem, 2) if mem is not None else None,
        memory_method=method,
        **common,
    )


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # not available on this platform
        return None


def _mark_fastest(rows: list[ProfileRow]) -> list[FastestEntry]:
    out = []
    for b in sorted({r.batch_size for r in rows}):
        ok = [r for r in rows if r.batch_size == b and r.status == "ok" and r.latency_ms]
        if not ok:
            continue
        best = min(ok, key=lambda r: r.latency_ms.p50)  # type: ignore[union-attr]
        best.fastest = True
        out.append(FastestEntry(batch_size=b, variant=best.variant, p50_ms=best.latency_ms.p50))  # type: ignore[union-attr]
    return out
