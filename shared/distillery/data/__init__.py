"""Data: Cityscapes and BDD100K in their native layouts, augmentation in torch, the synthetic
driving-scene generator, validation and statistics."""

from distillery.data.build import SegmentationConcat, build_datasets
from distillery.data.datasets import (
    DATASETS,
    BDD100KDataset,
    CityscapesDataset,
    SegmentationDataset,
)
from distillery.data.errors import DatasetError
from distillery.data.stats import DatasetStats, class_weights, compute_stats
from distillery.data.synthetic import ensure_synthetic, generate_synthetic
from distillery.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TrainTransform,
    ValTransform,
    denormalize,
    normalize,
)
from distillery.data.validate import validate_dataset

__all__ = [
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BDD100KDataset",
    "CityscapesDataset",
    "DatasetError",
    "DatasetStats",
    "SegmentationConcat",
    "SegmentationDataset",
    "TrainTransform",
    "ValTransform",
    "build_datasets",
    "class_weights",
    "compute_stats",
    "denormalize",
    "ensure_synthetic",
    "generate_synthetic",
    "normalize",
    "validate_dataset",
]
