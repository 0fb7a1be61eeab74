"""Latency measurement: warm-up, then repeat until the latency is stable.

On a GPU each call is timed with CUDA events recorded after a `synchronize` (so the queue is
empty when the clock starts and the time is the GPU's, not the launch's); on the CPU with
`time.perf_counter_ns`, a monotonic clock.

Stability is the *robust* coefficient of variation of the samples,
``cv = 1.4826 * MAD / median`` (MAD: median absolute deviation; 1.4826 * MAD estimates the
standard deviation for normal noise, so this is std/mean for well-behaved samples), which one
pre-empted run on a shared machine does not inflate. Repeats stop once ``cv < target_cv``
after ``min_repeats``, or at ``max_repeats``, or after ``max_time_s`` (once ``min_repeats``
are done). ``stable`` is ``cv < target_cv`` with at least 3 samples: a noisy measurement is
reported as such, never hidden.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from pydantic import BaseModel

from distillery.profiler.device import synchronize

#: Fewest samples for which a measurement may be called stable.
MIN_STABLE_SAMPLES = 3


class LatencyStats(BaseModel):
    """Latency of one call (one batch) over `repeats` timed calls. All times in milliseconds
    (a profile row holds it as `latency_ms`)."""

    mean: float
    std: float
    min: float
    max: float
    p50: float
    p90: float
    p99: float
    #: Robust coefficient of variation, 1.4826 * MAD / median.
    cv: float
    repeats: int
    warmup: int
    stable: bool
    #: `cuda-events` or `perf_counter_ns`.
    timer: str
    #: Why repeating stopped: `stable`, `max_repeats` or `max_time`.
    stopped_by: str
    #: The first warm-up call (includes e.g. torch.compile's compilation).
    first_call: float | None = None
    samples: list[float]


def robust_cv(samples: list[float] | np.ndarray) -> float:
    """1.4826 * median(|x - median(x)|) / median(x); 0 for fewer than 2 samples."""
    x = np.asarray(samples, dtype=float)
    if x.size < 2:
        return 0.0
    med = float(np.median(x))
    if med <= 0:
        return float("inf")
    return float(1.4826 * np.median(np.abs(x - med)) / med)


def summarize(
    samples: list[float],
    *,
    warmup: int,
    target_cv: float,
    timer: str,
    stopped_by: str,
    first_call: float | None = None,
) -> LatencyStats:
    x = np.asarray(samples, dtype=float)
    cv = robust_cv(x)
    return LatencyStats(
        mean=float(x.mean()),
        std=float(x.std(ddof=1)) if x.size > 1 else 0.0,
        min=float(x.min()),
        max=float(x.max()),
        p50=float(np.percentile(x, 50)),
        p90=float(np.percentile(x, 90)),
        p99=float(np.percentile(x, 99)),
        cv=cv,
        repeats=int(x.size),
        warmup=warmup,
        stable=bool(x.size >= MIN_STABLE_SAMPLES and cv < target_cv),
        timer=timer,
        stopped_by=stopped_by,
        first_call=first_call,
        samples=[round(float(s), 6) for s in x],
    )


def measure_latency(
    call: Callable[[], object],
    device: torch.device,
    *,
    warmup: int = 3,
    min_repeats: int = 5,
    max_repeats: int = 50,
    target_cv: float = 0.05,
    max_time_s: float | None = None,
) -> LatencyStats:
    """Time `call()` (one batch through the model) until stable; see the module docstring."""
    if min_repeats < 1 or max_repeats < min_repeats:
        raise ValueError(f"need 1 <= min_repeats <= max_repeats, got {min_repeats}, {max_repeats}")
    cuda = device.type == "cuda"
    timer = "cuda-events" if cuda else "perf_counter_ns"

    def timed() -> float:
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            synchronize(device)
            start.record()
            call()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))
        t0 = time.perf_counter_ns()
        call()
        return (time.perf_counter_ns() - t0) / 1e6

    first_call_ms = None
    for i in range(warmup):
        t = timed()
        if i == 0:
            first_call_ms = t
    samples: list[float] = []
    began = time.monotonic()
    stopped_by = "max_repeats"
    while len(samples) < max_repeats:
        samples.append(timed())
        if len(samples) < min_repeats:
            continue
        if len(samples) >= MIN_STABLE_SAMPLES and robust_cv(samples) < target_cv:
            stopped_by = "stable"
            break
        if max_time_s is not None and time.monotonic() - began > max_time_s:
            stopped_by = "max_time"
            break
    return summarize(
        samples,
        warmup=warmup,
        target_cv=target_cv,
        timer=timer,
        stopped_by=stopped_by,
        first_call=first_call_ms,
    )
