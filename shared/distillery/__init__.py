"""Distillery: train segmentation teachers for driving scenes and distil them into students."""

__version__ = "0.1.0"
