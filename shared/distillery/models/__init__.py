"""Segmentation models, registered by name."""

from distillery.models.base import SegmentationModel
from distillery.models.registry import MODELS, build_model
from distillery.models.taps import FeatureTaps
from distillery.models.unet import UNet

__all__ = ["MODELS", "FeatureTaps", "SegmentationModel", "UNet", "build_model"]
