"""Run exported models over the validation split for the seed analyses (this module needs torch).

- `seeds_bias_variance`: the students of one configuration (one per seed) -> `BiasVariance`;
- `teacher_calibration`: a teacher -> mean entropy and ECE (`Calibration`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from distillery.metrics import class_names
from distillery.research.calibration import Calibration, CalibrationAccumulator
from distillery.research.variance import BiasVariance, BiasVarianceAccumulator
from distillery.spec import DatasetRef, DataSpec


def _val_batches(
    data: DataSpec,
    batch_size: int,
    resolve_root: Callable[[DatasetRef], Path] | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    from distillery.data import build_datasets
    from distillery.training.loaders import val_loader

    _, val_set = build_datasets(data, resolve_root)
    for batch in val_loader(val_set, batch_size=batch_size, num_workers=0):
        yield batch["image"], batch["mask"]


def _load(paths: Sequence[str | Path]) -> list[torch.nn.Module]:
    from distillery.models.checkpoint import load_model_checkpoint

    return [load_model_checkpoint(p)[0] for p in paths]


@torch.inference_mode()
def seeds_bias_variance(
    model_paths: Sequence[str | Path],
    data: DataSpec,
    *,
    batch_size: int = 8,
    resolve_root: Callable[[DatasetRef], Path] | None = None,
) -> BiasVariance:
    """The 0-1 loss decomposition over the students in `model_paths` (one per seed)."""
    models = _load(model_paths)
    c = models[0].num_classes  # type: ignore[attr-defined]
    acc = BiasVarianceAccumulator(c, class_names(c))
    for images, masks in _val_batches(data, batch_size, resolve_root):
        preds = torch.stack([m(images).argmax(1) for m in models])
        acc.update(preds.numpy(), masks.numpy())
    return acc.compute()


@torch.inference_mode()
def teacher_calibration(
    model_path: str | Path,
    data: DataSpec,
    *,
    batch_size: int = 8,
    resolve_root: Callable[[DatasetRef], Path] | None = None,
) -> Calibration:
    """Mean output entropy and 15-bin ECE of one model on the validation split."""
    (model,) = _load([model_path])
    acc = CalibrationAccumulator(model.num_classes)  # type: ignore[attr-defined]
    for images, masks in _val_batches(data, batch_size, resolve_root):
        acc.update(model(images).float().softmax(1).numpy(), masks.numpy())
    return acc.compute()


@torch.inference_mode()
def evaluate_model(
    model_path: str | Path,
    data: DataSpec,
    *,
    batch_size: int = 8,
    resolve_root: Callable[[DatasetRef], Path] | None = None,
) -> dict[str, object]:
    """A model's validation metrics (``SegMetrics.as_dict()``), e.g. for a teacher given as a
    checkpoint, whose mIoU no stage of this run measured."""
    from distillery.metrics import ConfusionMatrix

    (model,) = _load([model_path])
    confusion = ConfusionMatrix(model.num_classes)  # type: ignore[attr-defined]
    for images, masks in _val_batches(data, batch_size, resolve_root):
        confusion.update(model(images).argmax(1), masks)
    return confusion.compute().as_dict()
