"""Images for the tracker at the end of an epoch (main process only): input / ground truth /
prediction for a few fixed validation images, and the feature maps at every tap for one fixed
validation image (teacher and student side by side in distillation stages)."""

from __future__ import annotations

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import Dataset

from distillery.data import denormalize
from distillery.data.transforms import resize_mask
from distillery.inference import segment
from distillery.losses.output import unwrap
from distillery.models import FeatureTaps
from distillery.tracking import Tracker

#: Fixed validation images shown each epoch (the first ones of the validation set).
NUM_IMAGES = 4


def fixed_batch(dataset: Dataset, n: int = NUM_IMAGES) -> dict[str, torch.Tensor]:
    """The first `n` validation images of the first one's size, masks shown at the input size
    (validation masks are native-size)."""
    first = dataset[0]  # type: ignore[index]
    items = [first] + [dataset[i] for i in range(1, min(n, len(dataset)))]  # type: ignore[index]
    items = [it for it in items if it["image"].shape == first["image"].shape]
    hw = first["image"].shape[-2:]
    return {
        "image": torch.stack([it["image"] for it in items]),
        "mask": torch.stack([resize_mask(torch.as_tensor(it["mask"]), hw) for it in items]),
    }


@torch.inference_mode()
def _forward_all_taps(
    model: nn.Module, images: torch.Tensor, accelerator: Accelerator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    net = unwrap(model)
    was_training = net.training
    net.eval()
    try:
        with FeatureTaps(net, getattr(net, "tap_names", [])) as taps, accelerator.autocast():
            logits = segment(net, images, images.shape[-2:])
        return logits.float(), {k: v.float() for k, v in taps.features.items()}
    finally:
        net.train(was_training)


def log_epoch_media(
    tracker: Tracker,
    accelerator: Accelerator,
    batch: dict[str, torch.Tensor],
    model: nn.Module,
    step: int,
    *,
    teacher: nn.Module | None = None,
    prefix: str = "val",
) -> None:
    """Log segmentations of `batch` by `model`, and feature maps of its first image (with the
    `teacher`'s beside them, if given)."""
    if not (tracker.wants_images or tracker.wants_feature_maps):
        return
    images = batch["image"].to(accelerator.device)
    logits, features = _forward_all_taps(model, images, accelerator)
    if tracker.wants_images:
        preds = logits.argmax(1).cpu().numpy()
        for i in range(images.shape[0]):
            tracker.log_segmentation(
                f"{prefix}/segmentation/{i}",
                denormalize(batch["image"][i]),
                batch["mask"][i].numpy(),
                preds[i],
                step=step,
            )
    if tracker.wants_feature_maps:
        first = {k: v[:1] for k, v in features.items()}
        teacher_maps = None
        if teacher is not None:
            _, t_features = _forward_all_taps(teacher, images[:1], accelerator)
            teacher_maps = t_features
        tracker.log_feature_maps(f"{prefix}/feature_maps", teacher_maps, first, step=step)
