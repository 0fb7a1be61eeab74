"""Profiling variants: a runtime (eager, channels_last, compile, onnx) at a precision (fp32, bf16,
fp16 autocast), and whether this machine can run it.

A variant is written `runtime[+precision]` (`channels_last+bf16`); a bare precision means eager
(`bf16` = `eager+bf16`); a bare runtime takes the spec's default precision. This module imports
no torch at import time: the spec validates variant names through it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Literal

Runtime = Literal["eager", "channels_last", "compile", "onnx"]
Precision = Literal["fp32", "bf16", "fp16"]
RUNTIMES: tuple[Runtime, ...] = ("eager", "channels_last", "compile", "onnx")
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Variant:
    runtime: Runtime
    #: None: the spec's default precision (see `with_default`).
    precision: Precision | None = None

    @property
    def name(self) -> str:
        """Canonical name, e.g. `channels_last+bf16` (`eager` while the precision is unset)."""
        return f"{self.runtime}+{self.precision}" if self.precision else self.runtime

    def with_default(self, precision: Precision) -> Variant:
        return self if self.precision else Variant(self.runtime, precision)


def parse_variant(text: str) -> Variant:
    """`eager` | `bf16` | `channels_last+fp16` ... -> Variant; a clear ValueError otherwise."""
    parts = [p.strip() for p in text.strip().split("+")]
    if len(parts) == 1 and parts[0] in PRECISIONS:
        return Variant("eager", parts[0])  # type: ignore[arg-type]
    if len(parts) in (1, 2) and parts[0] in RUNTIMES:
        if len(parts) == 1:
            return Variant(parts[0])  # type: ignore[arg-type]
        if parts[1] in PRECISIONS:
            return Variant(parts[0], parts[1])  # type: ignore[arg-type]
    raise ValueError(
        f"unknown profiling variant {text!r}: write runtime[+precision] with runtime one of "
        f"{', '.join(RUNTIMES)} and precision one of {', '.join(PRECISIONS)} "
        "(a bare precision such as 'bf16' means eager)"
    )


def parse_variants(items: list[str] | str, default_precision: Precision) -> list[Variant]:
    """A list (or comma-separated string) of variant names -> resolved, de-duplicated variants."""
    if isinstance(items, str):
        items = [s for s in items.split(",") if s.strip()]
    out: list[Variant] = []
    for item in items:
        v = parse_variant(item).with_default(default_precision)
        if v not in out:
            out.append(v)
    if not out:
        raise ValueError("variants: give at least one variant")
    return out


def unavailable_reason(variant: Variant, device_type: str) -> tuple[str, str] | None:
    """None if `variant` can run on `device_type` here, else (status, reason) with status
    `unsupported` (the combination cannot run on this kind of device) or `unavailable` (a
    missing package or tool on this machine)."""
    assert variant.precision is not None, "resolve the default precision first"
    if variant.precision == "fp16" and device_type == "cpu":
        return (
            "unsupported",
            "fp16 autocast is not supported on the CPU here (use bf16 on the CPU, fp16 on a GPU)",
        )
    if variant.runtime == "onnx":
        if variant.precision != "fp32":
            return ("unsupported", "the onnx variant runs the fp32 export only")
        for module, pkg in (("onnx", "onnx"), ("onnxruntime", "onnxruntime")):
            if importlib.util.find_spec(module) is None:
                return (
                    "unavailable",
                    f"{pkg} is not installed (pip install 'distillery[onnx]')",
                )
        import onnxruntime

        if device_type == "cuda" and (
            "CUDAExecutionProvider" not in onnxruntime.get_available_providers()
        ):
            return (
                "unavailable",
                "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)",
            )
    if variant.runtime == "compile":
        return _compile_unavailable(device_type)
    return None


def _compile_unavailable(device_type: str) -> tuple[str, str] | None:
    if device_type == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler

            get_cpp_compiler()
        except Exception as e:  # InvalidCxxCompiler and friends
            return (
                "unavailable",
                f"torch.compile on the CPU needs a C++ compiler, none found "
                f"({type(e).__name__}; set CXX)",
            )
        return None
    try:
        from torch.utils._triton import has_triton
    except ImportError:  # pragma: no cover - very old torch
        return ("unavailable", "torch.compile on the GPU needs triton, which was not found")
    if not has_triton():
        return ("unavailable", "torch.compile on the GPU needs triton, which is not installed")
    return None
