"""Whole-image inference at the label's native resolution, shared by validation and `predict`.

An image of any size and aspect ratio (Cityscapes 2:1, BDD100K 16:9, ...) is

1. resized (bilinear, aspect ratio kept) so that it just covers the input size asked for, or
   left at its native size (`input_hw`, see `input_hw`),
2. padded at the bottom/right with 0 (the mean colour after normalisation) to a multiple of the
   model's down-sampling factor (2**depth for the UNets),
3. run through the model; the logits of the padding are cropped off, and the rest are upsampled
   (bilinear) to the native size of the image/label, where the argmax is taken.

Validation (`training.evaluation`) and `distillery predict` both call `segment`, so the mIoU a
training run reports equals `distillery evaluate` on the exported predictions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch.nn.functional as F
from torch import Tensor, nn


def input_hw(native_hw: Sequence[int], size: Sequence[int] | None) -> tuple[int, int]:
    """The model input (h, w) of an image of `native_hw`: scaled so that it just covers `size`
    (h, w) with its aspect ratio kept (a 1024x2048 image and size 512x1024 give 512x1024, a
    720x1280 one 576x1024), or the native size if `size` is None."""
    h, w = int(native_hw[0]), int(native_hw[1])
    if size is None:
        return h, w
    s = max(int(size[0]) / h, int(size[1]) / w)
    return max(1, round(h * s)), max(1, round(w * s))


def size_multiple(model: nn.Module) -> int:
    """The factor the model's input sides must be divisible by (1 if the model says nothing)."""
    return int(getattr(model, "downsample_factor", 1))


def pad_to_multiple(images: Tensor, multiple: int) -> Tensor:
    """Pad (N, C, H, W) at the bottom and right with 0 so that H and W divide by `multiple`."""
    h, w = images.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return images
    return F.pad(images, (0, pw, 0, ph))


def segment(
    model: nn.Module, images: Tensor, out_hw: Sequence[int], multiple: int | None = None
) -> Tensor:
    """Logits (N, C, *out_hw) in float32 for normalised `images` (N, 3, h, w) of one size.

    The images are padded to `multiple` (default: `size_multiple(model)`), the logits of the
    padding cropped off, and the rest upsampled bilinearly to `out_hw` (the labels' size).
    Runs under whatever autocast/inference context the caller set up.
    """
    h, w = images.shape[-2:]
    m = size_multiple(model) if multiple is None else multiple
    logits = model(pad_to_multiple(images, m))[..., :h, :w].float()
    oh, ow = int(out_hw[0]), int(out_hw[1])
    if (h, w) != (oh, ow):
        logits = F.interpolate(logits, size=(oh, ow), mode="bilinear", align_corners=False)
    return logits


def same_size_runs(items: Sequence[dict]) -> Iterator[list[dict]]:
    """Consecutive items whose image and mask sizes agree (so they can be stacked)."""
    run: list[dict] = []
    key = None
    for it in items:
        k = (tuple(it["image"].shape), tuple(it["mask"].shape))
        if run and k != key:
            yield run
            run = []
        key = k
        run.append(it)
    if run:
        yield run


def collate_list(items: list[dict]) -> list[dict]:
    """DataLoader `collate_fn` for validation/prediction: a list of items of any sizes."""
    return items
