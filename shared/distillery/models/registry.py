"""The model registry and the one way to build a model from a spec."""

from __future__ import annotations

from typing import TYPE_CHECKING

from distillery.registry import MODELS

if TYPE_CHECKING:
    from distillery.models.base import SegmentationModel
    from distillery.spec import ModelSpec

__all__ = ["MODELS", "build_model"]


def build_model(spec: ModelSpec, width: int | None = None) -> SegmentationModel:
    """Build the model a `ModelSpec` names (`width` overrides `spec.width`, e.g. once resolved)."""
    w = width if width is not None else spec.width
    if w == "auto":
        raise ValueError("model width is 'auto': resolve it with the profiler before building")
    cls = MODELS.get(spec.arch)
    return cls(
        num_classes=spec.num_classes,
        depth=spec.depth,
        width=int(w),
        norm=spec.norm,
        upsample=spec.upsample,
        separable=spec.separable,
    )
