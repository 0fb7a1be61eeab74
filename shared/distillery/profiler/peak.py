"""The device's measured matrix-multiply peak, measured once and cached.

The peak is the best of a few large square matmuls (n x n @ n x n = 2 n^3 FLOPs) at a dtype,
timed like a model (CUDA events / perf_counter_ns). On a GPU it is measured with the process's
TF32 setting for matmuls (part of the key), while cuDNN convolutions may use TF32 regardless, so
fp32 convolutions can exceed an fp32 peak. A peak measured while other work shared the device
is too low (fractions above 1 are the sign): `matmul_peak(..., refresh=True)` re-measures it.
It is cached in ``<cache dir>/matmul_peak.json``, keyed by device name + torch version + thread
count + dtype (+ whether TF32 matmuls are allowed on a GPU). The cache dir is
``$DISTILLERY_CACHE_DIR``, else ``$XDG_CACHE_HOME/distillery``, else ``~/.cache/distillery``.

Achieved GFLOP/s of a model divided by this peak says whether it is compute-bound (near 1) or
held back by memory traffic and launch overhead (far below 1).
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from pydantic import BaseModel

from distillery.profiler.device import cpu_model, synchronize

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Bumped when the measurement changes; cached peaks of another method are measured again.
METHOD = 2


class MatmulPeak(BaseModel):
    key: str
    gflops_per_s: float
    dtype: str
    #: The square matrix size n and the library that reached the peak.
    size: int
    library: str = "torch.mm"
    repeats: int
    measured_at: str
    method: int = METHOD
    #: The CPU was busy with other work while measuring (the figure may be low).
    busy: bool = False
    cached: bool = False


#: Keys measured by this process (a busy figure is re-measured at most once per process).
_MEASURED_HERE: set[str] = set()


def cache_dir() -> Path:
    if d := os.environ.get("DISTILLERY_CACHE_DIR"):
        return Path(d)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "distillery"


def peak_key(device: torch.device, precision: str) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        tf32 = f"|tf32={torch.backends.cuda.matmul.allow_tf32}" if precision == "fp32" else ""
    else:
        name, tf32 = cpu_model(), ""
    return f"{name}|torch={torch.__version__}|threads={torch.get_num_threads()}|{precision}{tf32}"


def matmul_peak(
    device: torch.device,
    precision: str = "fp32",
    *,
    size: int | None = None,
    repeats: int = 5,
    refresh: bool = False,
) -> MatmulPeak:
    """The cached peak for (device, torch, threads, precision), measuring it if absent.

    A peak measured while the CPU was busy (1-minute load average above the CPU count) is
    measured again (once per process), and the cache keeps the higher figure: a peak only
    underestimates. `refresh=True` replaces the cached figure outright."""
    if precision not in DTYPES:
        raise ValueError(f"precision {precision!r}: use one of {', '.join(DTYPES)}")
    key = peak_key(device, precision)
    path = cache_dir() / "matmul_peak.json"
    cache: dict[str, dict] = {}
    if path.is_file():
        try:
            cache = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            cache = {}  # a corrupt cache is re-measured, not trusted
    old: MatmulPeak | None = None
    if not refresh and key in cache and cache[key].get("method") == METHOD:
        try:
            old = MatmulPeak.model_validate({**cache[key], "cached": True})
        except ValueError:
            old = None
        if old is not None and (not old.busy or key in _MEASURED_HERE):
            return old
    peak = measure_matmul_peak(device, precision, size=size, repeats=repeats)
    _MEASURED_HERE.add(key)
    if old is not None and old.gflops_per_s > peak.gflops_per_s:
        peak = old.model_copy(update={"busy": old.busy and peak.busy})
    cache[key] = peak.model_dump(exclude={"cached"})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=2, sort_keys=True))
        tmp.replace(path)
    except OSError:
        pass  # an unwritable cache only costs a re-measurement next time
    return peak


def _cpu_busy() -> bool:
    """1-minute load average above the CPUs this process may use (other work is running)."""
    try:
        return os.getloadavg()[0] > len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return False


def _time_mm(mm, device: torch.device) -> float:  # noqa: ANN001
    synchronize(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        mm()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter_ns()
    mm()
    return (time.perf_counter_ns() - t0) / 1e9


def _onnxruntime_matmul(n: int):  # noqa: ANN202
    """An ONNX Runtime session computing one n x n fp32 MatMul (MLAS GEMM), or None."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    spec = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "abc"]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "mm", spec[:2], spec[2:]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(
        model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    return lambda a, b: session.run(None, {"a": a, "b": b})


@torch.inference_mode()
def measure_matmul_peak(
    device: torch.device, precision: str = "fp32", *, size: int | None = None, repeats: int = 5
) -> MatmulPeak:
    """Best GFLOP/s of n x n matmuls, `repeats` timed after 2 warm-ups at each n (CPU: 2048, and
    4096 with more than 8 threads; GPU: 4096 and 8192; or only `size`).

    With torch.mm and, for fp32 on the CPU, also numpy's BLAS and ONNX Runtime's MLAS when
    installed: torch's MKL GEMM is not the fastest on every CPU (on AMD it can reach half of
    what the cores do). The best run counts, because the peak is what the device can do; slower
    runs are other work on the machine or too-small matrices."""
    busy = _cpu_busy()
    if size:
        sizes = [size]
    elif device.type == "cuda":
        sizes = [4096, 8192]
    else:
        sizes = [2048, 4096] if torch.get_num_threads() > 8 else [2048]
    dtype = DTYPES[precision]
    best, best_n, best_lib = 0.0, sizes[0], "torch.mm"
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        libs = {"torch.mm": lambda a=a, b=b: torch.mm(a, b)}
        if device.type == "cpu" and precision == "fp32":
            an, bn = a.numpy(), b.numpy()
            libs["numpy.matmul"] = lambda an=an, bn=bn: an @ bn
            if (ort_mm := _onnxruntime_matmul(n)) is not None:
                libs["onnxruntime.MatMul"] = lambda an=an, bn=bn, mm=ort_mm: mm(an, bn)
        for lib, mm in libs.items():
            for i in range(2 + repeats):
                seconds = _time_mm(mm, device)
                if i >= 2 and 2 * n**3 / seconds / 1e9 > best:
                    best, best_n, best_lib = 2 * n**3 / seconds / 1e9, n, lib
        del a, b, libs
    return MatmulPeak(
        key=peak_key(device, precision),
        busy=busy or _cpu_busy(),
        gflops_per_s=best,
        dtype=precision,
        size=best_n,
        library=best_lib,
        repeats=repeats,
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
