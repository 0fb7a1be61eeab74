"""Fixtures of the training tests: a tiny synthetic data set (32x64, 12 train / 6 val images)
and specs of tiny models (width 4, depth 2) trained for a few steps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from distillery.spec import ExperimentSpec

TRAIN_IMAGES, VAL_IMAGES = 12, 6
IMAGE_SIZE = (32, 64)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread: these models are tiny, and on a busy 2-core machine OpenMP threads
    spin waiting for a descheduled sibling (the suite ran 4x slower with 2 threads under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic Cityscapes-layout data set, generated once per session."""
    from distillery.data import build_datasets
    from distillery.spec import DataSpec

    root = tmp_path_factory.mktemp("data") / "cityscapes"
    build_datasets(DataSpec.model_validate(_data(root)))  # generates it
    return root


def _data(root: Path) -> dict[str, Any]:
    ref = {"format": "cityscapes", "root": str(root)}
    return {
        "train": [ref],
        "val": [ref],
        "image_size": list(IMAGE_SIZE),
        "synthetic": {
            "num_train": TRAIN_IMAGES,
            "num_val": VAL_IMAGES,
            "image_size": list(IMAGE_SIZE),
            "seed": 0,
        },
    }


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture
def make_spec(data_root: Path):
    """`make_spec(**overrides)`: a tiny experiment; 2 epochs of 3 steps (batch 4 of 12 images)."""

    def make(**overrides: Any) -> ExperimentSpec:
        train = {"epochs": 2, "batch_size": 4, "lr": 0.01}
        model = {"width": 4, "depth": 2}
        base = {
            "name": "tiny",
            "seed": 0,
            "data": _data(data_root),
            "teacher": {"model": model, "train": train},
            "student": {"model": model, "train": train},
            "tracking": {"mode": "disabled"},
        }
        return ExperimentSpec.model_validate(_merge(base, overrides))

    return make


@pytest.fixture(scope="session")
def teacher_model(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """An exported teacher (width 8, depth 2) trained for one epoch."""
    from distillery.training import run_stage

    spec = ExperimentSpec.model_validate(
        {
            "name": "tiny-teacher",
            "data": _data(data_root),
            "teacher": {"model": {"width": 8, "depth": 2}, "train": {"epochs": 1, "batch_size": 4}},
            "tracking": {"mode": "disabled"},
        }
    )
    return run_stage(spec, "teacher", tmp_path_factory.mktemp("teacher")).model_path
