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
    from distillery.inference import same_size_runs
    from distillery.training.loaders import val_loader

    _, val_set = build_datasets(data, resolve_root)
    for items in val_loader(val_set, batch_size=batch_size, num_workers=0):
        for run in same_size_runs(items):  # stackable: one image and mask size
            yield torch.stack([it["image"] for it in run]), torch.stack([it["mask"] for it in run])


def _logits(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Logits at the labels' (native) size, as validation scores them."""
    from distillery.inference import segment

    return segment(model, images, masks.shape[-2:])


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
        preds = torch.stack([_logits(m, images, masks).argmax(1) for m in models])
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
        acc.update(_logits(model, images, masks).softmax(1).numpy(), masks.numpy())
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
        confusion.update(_logits(model, images, masks).argmax(1), masks)
    return confusion.compute().as_dict()


@torch.inference_mode()
def sample_predictions(
    models: dict[str, str | Path],
    data: DataSpec,
    path: str | Path,
    *,
    images: int = 2,
    resolve_root: Callable[[DatasetRef], Path] | None = None,
) -> Path:
    """A PNG grid, one row per validation image: input, ground truth, then each model's
    prediction (label -> exported model), in the Cityscapes colours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from distillery.data.transforms import denormalize
    from distillery.visualize import overlay

    loaded = dict(zip(models, _load(list(models.values())), strict=True))
    batch_images, batch_masks = next(_val_batches(data, images, resolve_root))
    preds = {
        label: _logits(m, batch_images, batch_masks).argmax(1).numpy()
        for label, m in loaded.items()
    }
    cols = ["input", "ground truth", *models]
    n = batch_images.shape[0]
    fig, axes = plt.subplots(n, len(cols), figsize=(2.4 * len(cols), 1.5 * n + 0.4), squeeze=False)
    for i in range(n):
        image = denormalize(batch_images[i])
        tiles = [image, overlay(image, batch_masks[i].numpy())]
        tiles += [overlay(image, preds[label][i]) for label in models]
        for j, tile in enumerate(tiles):
            axes[i][j].imshow(tile)
            axes[i][j].axis("off")
            if i == 0:
                axes[i][j].set_title(cols[j], fontsize=8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
