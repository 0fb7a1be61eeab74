"""The synthetic driving-scene data set: scenes (`scene`) written in the native Cityscapes and
BDD100K layouts (`generate`). Tests and the quickstart use it; real data sets never need it."""

from distillery.data.synthetic.generate import (
    ensure_synthetic,
    generate_synthetic,
    is_complete,
    marker_path,
)

__all__ = ["ensure_synthetic", "generate_synthetic", "is_complete", "marker_path"]
