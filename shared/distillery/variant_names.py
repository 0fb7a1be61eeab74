"""Profiling variant names (`runtime[+precision]`), parsed without torch: the spec validates
`profiling.variants` through this module, and `distillery.profiler.variants` builds on it.
"""

from __future__ import annotations

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
