"""Process-wide runtime settings of a training stage, chosen explicitly and recorded.

- CPU threads (`train.num_threads`): intra-op threads of each training process. Default: the
  ``OMP_NUM_THREADS`` the operator set, else the cores this process may use divided among the
  processes, less one per loader worker (each worker runs one thread). Two runs side by side on
  one machine should each be given their share (`distillery run --threads`).
- CUDA: TF32 for float32 matmuls/convolutions (`train.tf32`), ``cudnn.benchmark`` on (training
  crops have one fixed shape, so the autotuned kernels are reused every step).

`apply_runtime` sets them and returns what it set; the trainer stores that in the stage result
(``runtime``) and the tracker's config.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from distillery.spec import TrainSpec


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers restrict)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_threads(num_processes: int, num_workers: int, cores: int | None = None) -> int:
    """``max(1, cores // num_processes - num_workers)``: each process's share of the cores,
    less one core per loader worker of that process."""
    cores = available_cores() if cores is None else cores
    return max(1, cores // max(1, num_processes) - num_workers)


def resolve_threads(train: TrainSpec, num_workers: int) -> int:
    """`train.num_threads`, else ``OMP_NUM_THREADS`` if set, else `default_threads`."""
    if train.num_threads is not None:
        return train.num_threads
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return default_threads(train.num_processes, num_workers)


def apply_runtime(train: TrainSpec, num_workers: int, device: torch.device) -> dict[str, Any]:
    """Set the threads (and on CUDA TF32 and cudnn.benchmark); return what was set."""
    threads = resolve_threads(train, num_workers)
    torch.set_num_threads(threads)
    record: dict[str, Any] = {"device": device.type, "num_threads": threads}
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = train.tf32
        torch.backends.cudnn.allow_tf32 = train.tf32
        torch.backends.cudnn.benchmark = True
        record |= {"tf32": train.tf32, "cudnn_benchmark": True}
    else:
        record |= {"tf32": False, "cudnn_benchmark": False}
    return record
