"""CPU training speed: keep freed memory in the process instead of handing it back to the OS.

glibc's malloc returns the top of the heap to the kernel once more than `M_TRIM_THRESHOLD` of it
is free, and serves large blocks with fresh `mmap`s. A training step frees megabytes of
activations and allocates them again in the next step, so every step page-faults (and zeroes)
that memory anew: measured here at 10-20% of a CPU step, more for steps with a larger working
set such as a distillation step (teacher and student activations). Raising both thresholds keeps
the memory mapped; the price is that the process keeps its peak heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
#: Blocks up to this size come from the heap (glibc's largest allowed mmap threshold on 64-bit).
MMAP_THRESHOLD = 32 * 2**20
#: Free memory at the top of the heap kept mapped (mallopt takes an int).
TRIM_THRESHOLD = 2**31 - 1
#: Extra heap requested from the kernel at once.
TOP_PAD = 64 * 2**20

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Apply the malloc settings above (glibc on Linux; once per process). True if in effect."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = all(
        mallopt(param, value) == 1
        for param, value in (
            (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (M_TOP_PAD, TOP_PAD),
        )
    )
    return _applied
