"""Peak memory of one forward pass, measured in a separate, untimed pass.

- GPU: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was
  allocated before the pass (the weights and the input). Tensors only: the caching allocator's
  reserve, cuDNN workspaces outside it and the CUDA context are not counted.
- CPU: torch's CPU tensors come from malloc, which ``tracemalloc`` does not see, and
  ``ru_maxrss`` is a high-water mark over the whole process lifetime. Instead the process's
  resident-set high-water mark (``VmHWM``) is reset to the current RSS by writing ``5`` to
  ``/proc/self/clear_refs`` (Linux >= 4.0), the pass runs, and the figure is
  ``VmHWM - VmRSS_before``: the resident memory the pass needed beyond what the process already
  held. ``malloc_trim(0)`` first hands memory glibc kept from earlier passes back to the OS, so
  the pass has to fault its working set in again. Where ``clear_refs`` cannot be written, VmRSS
  is sampled every millisecond from a thread instead (which can miss a short peak).
  Caveats: it is process-wide (another thread allocating at the same time counts), and it is
  the pass's resident growth, not the weights.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from collections.abc import Callable
from functools import lru_cache

import torch

MB = 2**20


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return lib if lib is not None and hasattr(lib, "malloc_trim") else None


def _malloc_trim() -> None:
    lib = _libc()
    if lib is not None:
        lib.malloc_trim(0)


def peak_memory_mb(run: Callable[[], object], device: torch.device) -> tuple[float | None, str]:
    """(peak MB above the pre-pass baseline, method) of one call of `run`; None if unmeasurable."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return (peak - before) / MB, "cuda max_memory_allocated above the pre-pass allocation"
    _malloc_trim()
    before = _status_kb("VmRSS")
    if before is None:
        return None, "unavailable: no /proc/self/status"
    if _reset_hwm():
        run()
        hwm = _status_kb("VmHWM")
        return (max(hwm - before, 0) / 1024 if hwm else None), "VmHWM (reset) - VmRSS before"
    return _sampled(run, before), "VmRSS sampled every 1 ms - VmRSS before"


def _sampled(run: Callable[[], object], before_kb: int) -> float:
    peak = before_kb
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _status_kb("VmRSS") or 0)
            time.sleep(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        run()
    finally:
        done.set()
        t.join()
    peak = max(peak, _status_kb("VmRSS") or 0)
    return (peak - before_kb) / 1024
