"""The device a profile runs on: resolving a name to a torch device, and describing it."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from functools import lru_cache

import torch
from pydantic import BaseModel


class DeviceError(ValueError):
    """A requested device that is not there (e.g. `cuda` on a machine without a GPU)."""


class DeviceInfo(BaseModel):
    """Where the numbers were measured. Recorded with every profile."""

    #: `cpu` or `cuda`.
    type: str
    #: torch device string, e.g. `cpu` or `cuda:0`.
    device: str
    #: GPU name on a GPU, CPU model on the CPU.
    name: str
    cpu_model: str
    #: torch.get_num_threads() (intra-op threads used for CPU work).
    num_threads: int
    #: CPUs this process may run on (its affinity set).
    cpu_count: int
    torch_version: str
    python_version: str
    gpu_name: str | None = None
    gpu_memory_gb: float | None = None
    gpu_capability: str | None = None
    driver_version: str | None = None
    cuda_version: str | None = None
    cudnn_version: int | None = None
    onnxruntime_version: str | None = None


def resolve_device(device: str | None) -> torch.device:
    """`None`/`auto` -> cuda if available else cpu; `cpu`, `cuda`, `cuda:N` are checked."""
    name = (device or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DeviceError(
            f"device {device!r} is not a device name; use cpu, cuda, cuda:N or auto"
        ) from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise DeviceError(f"device {device!r}: the profiler runs on cpu or cuda only")
    if not torch.cuda.is_available():
        why = (
            "this torch build has no CUDA"
            if torch.version.cuda is None
            else "no CUDA GPU is visible (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})"
        )
        raise DeviceError(
            f"device {device!r} requested but torch.cuda.is_available() is False: {why} "
            f"(torch {torch.__version__}); use --device cpu"
        )
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise DeviceError(
            f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible"
        )
    return torch.device("cuda", index)


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@lru_cache(maxsize=8)
def _driver_version(index: int) -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=driver_version", "--format=csv,noheader", f"--id={index}"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def describe_device(device: torch.device) -> DeviceInfo:
    """Record the device, the software and the thread count the numbers belong to."""
    try:
        import onnxruntime

        ort_version: str | None = onnxruntime.__version__
    except ImportError:
        ort_version = None
    common = dict(
        type=device.type,
        device=str(device),
        cpu_model=cpu_model(),
        num_threads=torch.get_num_threads(),
        cpu_count=_cpu_count(),
        torch_version=torch.__version__,
        python_version=platform.python_version(),
        onnxruntime_version=ort_version,
    )
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return DeviceInfo(
            name=props.name,
            gpu_name=props.name,
            gpu_memory_gb=round(props.total_memory / 2**30, 1),
            gpu_capability=f"{props.major}.{props.minor}",
            driver_version=_driver_version(device.index or 0),
            cuda_version=torch.version.cuda,
            cudnn_version=torch.backends.cudnn.version(),
            **common,
        )
    return DeviceInfo(name=cpu_model(), **common)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
