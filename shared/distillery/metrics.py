"""Segmentation metrics from a confusion matrix: per-class IoU, mIoU and pixel accuracy.

Conventions follow the official Cityscapes pixel-level evaluation:

- Pixels whose ground truth is `ignore_index` (255) are not counted at all.
- A prediction outside ``0..num_classes-1`` (e.g. 255) on a labelled pixel is a miss: a false
  negative for the ground-truth class, a false positive for no class.
- ``IoU_c = TP_c / (TP_c + FP_c + FN_c)``; a class absent from both prediction and ground truth
  (``TP + FP + FN = 0``) has IoU ``None`` and is left out of ``mIoU = mean_c IoU_c``.
- ``pixel accuracy = sum_c TP_c / (labelled pixels)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from distillery.data.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES


def class_names(num_classes: int) -> tuple[str, ...]:
    """The Cityscapes names for 19 classes, ``class_<i>`` otherwise."""
    if num_classes == NUM_CLASSES:
        return CLASS_NAMES
    return tuple(f"class_{i}" for i in range(num_classes))


@dataclass(frozen=True)
class SegMetrics:
    """Scores in 0..1. ``iou[c]`` is None for a class absent from both prediction and truth."""

    miou: float
    iou: list[float | None]
    pixel_accuracy: float
    #: Labelled (non-ignore) ground-truth pixels that were scored.
    num_pixels: int = 0

    @property
    def class_names(self) -> tuple[str, ...]:
        return class_names(len(self.iou))

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: ``{"miou", "iou": {class_name: value | None}, "pixel_accuracy"}``."""
        return {
            "miou": self.miou,
            "iou": dict(zip(self.class_names, self.iou, strict=True)),
            "pixel_accuracy": self.pixel_accuracy,
        }


class ConfusionMatrix:
    """Accumulates ``matrix[gt, pred]`` pixel counts on `device` with one ``bincount`` per update.

    The matrix has ``num_classes + 1`` columns: the last counts labelled pixels whose prediction
    is no valid class (e.g. 255). ``confusion`` is the square ``num_classes x num_classes`` part.
    """

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        ignore_index: int = IGNORE_INDEX,
        device: torch.device | str | None = None,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} collides with a class id")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(
            num_classes, num_classes + 1, dtype=torch.int64, device=device or "cpu"
        )

    @property
    def confusion(self) -> torch.Tensor:
        """``[gt, pred]`` counts over the valid classes (predictions of no class left out)."""
        return self.matrix[:, : self.num_classes]

    def reset(self) -> None:
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch. `pred` and `target` are integer class-id tensors of the same shape
        (e.g. ``logits.argmax(1)`` and the label batch)."""
        if pred.shape != target.shape:
            raise ValueError(
                f"pred shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}"
            )
        for name, t in (("pred", pred), ("target", target)):
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise TypeError(f"{name} must be an integer tensor of class ids, got {t.dtype}")
        n = self.num_classes
        dev = self.matrix.device
        pred = pred.to(dev, torch.int64).flatten()
        target = target.to(dev, torch.int64).flatten()
        labelled = target != self.ignore_index
        pred, target = pred[labelled], target[labelled]
        if target.numel() and (target.min() < 0 or target.max() >= n):
            bad = torch.unique(target[(target < 0) | (target >= n)])[:5].tolist()
            raise ValueError(
                f"target holds values {bad} outside 0..{n - 1} and ignore {self.ignore_index}"
            )
        pred = torch.where((pred >= 0) & (pred < n), pred, n)  # no class -> the extra column
        counts = torch.bincount(target * (n + 1) + pred, minlength=n * (n + 1))
        self.matrix += counts.view(n, n + 1)

    def reduce(self, accelerator: Any) -> None:
        """Sum the matrix over all processes (``accelerator.reduce(..., "sum")``).

        Call it once, after the last update, on every process; no-op with one process.
        """
        if getattr(accelerator, "num_processes", 1) <= 1:
            return
        reduced = accelerator.reduce(self.matrix.to(accelerator.device), reduction="sum")
        self.matrix = reduced.to(self.matrix.device)

    def compute(self) -> SegMetrics:
        """IoU per class, mIoU over the classes present, and pixel accuracy.

        With no labelled pixel at all, every IoU is None and mIoU and accuracy are 0.
        """
        m = self.matrix.double().cpu()
        n = self.num_classes
        tp = m.diagonal()  # m[c, c] for c < n
        fn = m.sum(1) - tp  # includes labelled pixels predicted as no class
        fp = m[:, :n].sum(0) - tp
        denom = tp + fp + fn
        iou: list[float | None] = [
            (tp[c] / denom[c]).item() if denom[c] > 0 else None for c in range(n)
        ]
        present = [v for v in iou if v is not None]
        miou = sum(present) / len(present) if present else 0.0
        total = m.sum().item()
        acc = tp.sum().item() / total if total > 0 else 0.0
        return SegMetrics(miou=miou, iou=iou, pixel_accuracy=acc, num_pixels=int(total))
