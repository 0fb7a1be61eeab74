"""Validation: per-class IoU, mIoU, pixel accuracy and mean output entropy, reduced over
processes. Each process scores its own shard (see `loaders.val_loader`); the confusion matrices
and entropy sums are then summed with `accelerator.reduce`, so the result covers the whole
validation set exactly once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from distillery.data.labels import IGNORE_INDEX
from distillery.inference import same_size_runs, segment
from distillery.losses import mean_entropy
from distillery.losses.output import unwrap
from distillery.metrics import ConfusionMatrix, SegMetrics


@dataclass
class Evaluation:
    """Scores over the whole validation set, and what this process saw of it."""

    metrics: SegMetrics
    #: Mean per-pixel entropy (nats) of the softmax over the labelled pixels.
    entropy: float
    #: Labelled pixels this process scored, and the names of its images.
    local_pixels: int = 0
    local_names: list[str] = field(default_factory=list)

    def as_dict(self, prefix: str = "") -> dict[str, Any]:
        """``{prefix}miou``, ``{prefix}pixel_accuracy``, ``{prefix}iou`` (class -> IoU),
        ``{prefix}entropy``."""
        d = self.metrics.as_dict()
        d["entropy"] = self.entropy
        return {f"{prefix}{k}": v for k, v in d.items()}

    def flat(self, prefix: str = "") -> dict[str, float]:
        """Scalars only, per-class IoU as ``{prefix}iou/<class>`` (absent classes left out)."""
        out = {
            f"{prefix}miou": self.metrics.miou,
            f"{prefix}pixel_accuracy": self.metrics.pixel_accuracy,
            f"{prefix}entropy": self.entropy,
        }
        for name, v in zip(self.metrics.class_names, self.metrics.iou, strict=True):
            if v is not None:
                out[f"{prefix}iou/{name}"] = v
        return out


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    accelerator: Accelerator,
    num_classes: int,
) -> Evaluation:
    """Score `model` on this process's `loader` shard, then reduce over all processes.

    The loader yields lists of items (`inference.collate_list`) of any sizes; consecutive items
    of one size are stacked. Scores are taken at each mask's native resolution: the logits are
    upsampled to it (`inference.segment`). Runs the unwrapped model (no DDP collectives: shards
    may differ in length) in eval mode, under the accelerator's autocast; restores the model's
    train/eval mode afterwards.
    """
    net = unwrap(model)
    was_training = net.training
    net.eval()
    device = accelerator.device
    cm = ConfusionMatrix(num_classes, IGNORE_INDEX, device=device)
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # entropy * pixels, pixels
    names: list[str] = []
    try:
        for batch in loader:
            for run in same_size_runs(batch):
                images = torch.stack([it["image"] for it in run]).to(device, non_blocking=True)
                masks = torch.stack([it["mask"] for it in run]).to(device, non_blocking=True)
                with accelerator.autocast():
                    logits = segment(net, images, masks.shape[-2:])
                cm.update(logits.argmax(1), masks)
                valid = (masks != IGNORE_INDEX).sum()
                sums[0] += mean_entropy(logits, masks).double() * valid
                sums[1] += valid
                names.extend(it["name"] for it in run)
    finally:
        net.train(was_training)
    local_pixels = int(cm.matrix.sum())
    cm.reduce(accelerator)
    if accelerator.num_processes > 1:
        sums = accelerator.reduce(sums, reduction="sum")
    entropy = (sums[0] / sums[1]).item() if sums[1] > 0 else 0.0
    return Evaluation(cm.compute(), entropy, local_pixels, names)
