"""Helpers for the gateway tests."""

from __future__ import annotations

from typing import Any


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def spec_dict(name: str = "exp", **overrides: Any) -> dict[str, Any]:
    """A small valid spec (local dataset roots: the gateway never reads them)."""
    spec: dict[str, Any] = {
        "name": name,
        "data": {
            "train": [{"format": "cityscapes", "root": "/data/cityscapes"}],
            "val": [{"format": "cityscapes", "root": "/data/cityscapes"}],
            "image_size": [64, 128],
        },
        "teacher": {"model": {"width": 8, "depth": 2}, "train": {"epochs": 2}},
        "student": {"model": {"width": 4, "depth": 2}, "train": {"epochs": 3}},
        "tracking": {"mode": "disabled"},
    }
    spec.update(overrides)
    return spec
