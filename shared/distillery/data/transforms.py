"""Image/mask transforms in torch (no torchvision).

Every transform is called as ``transform(image, mask, generator)`` with

- ``image``: uint8 tensor 3xHxW (RGB),
- ``mask``: int64 tensor HxW of trainIds (0..18, 255 = ignore),
- ``generator``: the ``torch.Generator`` all randomness is drawn from (deterministic given it),

and returns ``(float32 3xhxw normalised image, int64 hxw mask)``. Masks are only ever resized
with nearest-neighbour sampling, so no new label values appear.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from distillery.data.labels import IGNORE_INDEX
from distillery.inference import input_hw
from distillery.spec import AugmentSpec

#: ImageNet channel statistics (RGB, on images scaled to [0, 1]).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)
#: ITU-R 601 luma weights, as used for grey-scale in PIL.
_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)


class SegTransform(Protocol):
    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def normalize(image: torch.Tensor) -> torch.Tensor:
    """uint8 (or [0, 1] float) 3xHxW -> float32 normalised with the ImageNet mean/std."""
    if image.dtype == torch.uint8:
        image = image.float().div_(255.0)
    return (image - _MEAN) / _STD


def denormalize(image: torch.Tensor) -> np.ndarray:
    """A normalised 3xHxW tensor -> HxWx3 uint8 array (for plots and logged images)."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a 3xHxW image, got shape {tuple(image.shape)}")
    rgb = image.detach().float().cpu() * _STD + _MEAN
    return (rgb.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()


def resize_image(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of a float 3xHxW image (antialiased when shrinking)."""
    h, w = int(size[0]), int(size[1])
    if tuple(image.shape[-2:]) == (h, w):
        return image
    shrink = h < image.shape[-2] or w < image.shape[-1]
    return F.interpolate(
        image[None], size=(h, w), mode="bilinear", align_corners=False, antialias=shrink
    )[0]


def resize_mask(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of an int64 HxW mask (pixel centres, like PIL's NEAREST)."""
    h, w = int(size[0]), int(size[1])
    if tuple(mask.shape[-2:]) == (h, w):
        return mask
    out = F.interpolate(mask[None, None].float(), size=(h, w), mode="nearest-exact")
    return out[0, 0].long()


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


class Normalize:
    """Only normalise (keeps the native size): the default when a data set is given no transform."""

    random = False

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return normalize(image), mask.long()


class ValTransform:
    """Validation: resize the image (bilinear, aspect ratio kept) so that it just covers `size`
    (h, w), or keep it native if `size` is None; then normalise. The mask is NOT resized: scores
    are taken at the label's native resolution (the logits are upsampled to it, see
    `distillery.inference.segment`)."""

    random = False

    def __init__(self, size: Sequence[int] | None) -> None:
        self.size = None if size is None else (int(size[0]), int(size[1]))

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        img = image.float().div(255.0) if image.dtype == torch.uint8 else image.float()
        img = resize_image(img, input_hw(img.shape[-2:], self.size))
        return normalize(img), mask.long()


@dataclass(frozen=True)
class CropGeometry:
    """Where a training crop came from: the image scaled to `scaled_hw`, the crop window's
    top-left `offset` in that scaled image (negative: the image sits inside a padded crop), and
    whether the crop was mirrored. Enough to cut any map of the same image the same way
    (`TrainTransform.cut`)."""

    scaled_hw: tuple[int, int]
    offset: tuple[int, int]
    flip: bool


class TrainTransform:
    """Training augmentation. The crop window is chosen first and only the part of the image
    under it is resized, jittered and normalised (not the whole rescaled image, up to 1536x3072
    for Cityscapes):

    1. random scale: the image is first scaled so that it just covers the crop (the same
       framing as validation), then by ``s ~ U(scale_range)``;
    2. random crop window of ``size`` in the scaled image; where the scaled image is smaller
       than the crop it is placed at a random offset;
    3. the source pixels under the window (with a margin for the filter) are resized, image
       bilinear (antialiased when shrinking), mask nearest, and the window cut out;
    4. photometric jitter of the crop in random order: brightness ``x*b``, contrast
       ``(x-m)*c+m`` (m = mean grey level of the crop), saturation ``(x-g)*s+g`` (g = per-pixel
       grey), factors ``~ U(1-a, 1+a)``;
    5. ImageNet normalisation; the part of the crop outside the scaled image is padded with 0
       (the mean colour) and the mask with 255 (ignore);
    6. horizontal flip with probability 1/2 (image and mask together).

    All randomness comes from the generator passed to ``__call__``.
    """

    random = True

    def __init__(self, size: Sequence[int], augment: AugmentSpec | None = None) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.augment = augment or AugmentSpec()

    # -- pieces (public so tests can check them one by one) --------------------------------

    def scale_factor(self, hw: Sequence[int], generator: torch.Generator) -> float:
        lo, hi = self.augment.scale_range
        cover = max(self.size[0] / hw[0], self.size[1] / hw[1])
        return cover * _uniform(generator, lo, hi)

    def jitter(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Photometric jitter of a [0, 1] float image."""
        a = self.augment
        factors = [
            _uniform(generator, max(0.0, 1 - s), 1 + s)
            for s in (a.brightness, a.contrast, a.saturation)
        ]
        order = torch.randperm(3, generator=generator).tolist()
        for op in order:
            f = factors[op]
            if f == 1.0:
                continue
            if op == 0:
                image = image * f
            elif op == 1:
                m = (image * _LUMA).sum(0).mean()
                image = (image - m) * f + m
            else:
                g = (image * _LUMA).sum(0, keepdim=True)
                image = (image - g) * f + g
            image = image.clamp(0.0, 1.0)
        return image

    def scaled_window(
        self,
        image: torch.Tensor,
        mask: torch.Tensor,
        scaled_hw: Sequence[int],
        offset: Sequence[int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The part of the crop window at `offset` (top-left, in the image scaled to
        `scaled_hw`) that lies inside the scaled image: a [0, 1] float image and its mask,
        resized from only the source pixels under it (plus a margin for the filter)."""
        src, extent, visible = self._spans(mask.shape, scaled_hw, offset)
        image = image[:, src[0], src[1]]
        img = image.float().div(255.0) if image.dtype == torch.uint8 else image.float()
        img = resize_image(img, extent)[:, visible[0], visible[1]]
        m = resize_mask(mask[src[0], src[1]], extent)[visible[0], visible[1]]
        return img, m

    def scaled_map_window(
        self, values: torch.Tensor, scaled_hw: Sequence[int], offset: Sequence[int]
    ) -> torch.Tensor:
        """`scaled_window` for a float CxHxW map of the image at any resolution (a teacher's
        logits): bilinear from only the map's cells under the window."""
        src, extent, visible = self._spans(values.shape[-2:], scaled_hw, offset)
        out = resize_image(values[:, src[0], src[1]].float(), extent)
        return out[:, visible[0], visible[1]]

    def _spans(
        self, source_hw: Sequence[int], scaled_hw: Sequence[int], offset: Sequence[int]
    ) -> tuple[tuple[slice, slice], tuple[int, int], tuple[slice, slice]]:
        """(the source rows/cols under the window, the size they are resized to, the visible
        crop's rows/cols in the resized part) for a source of `source_hw` pixels."""
        spans = [
            _source_span(int(n), int(sn), int(o), c)
            for n, sn, o, c in zip(source_hw, scaled_hw, offset, self.size, strict=True)
        ]
        src = (slice(*spans[0][0]), slice(*spans[1][0]))
        extent = (spans[0][1][1] - spans[0][1][0], spans[1][1][1] - spans[1][1][0])
        visible = tuple(slice(lo - ta, hi - ta) for (_, (ta, _), (lo, hi)) in spans)
        return src, extent, (visible[0], visible[1])

    def place(
        self, image: torch.Tensor, mask: torch.Tensor, offset: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Put the visible part of the crop at its place in a `size` crop: the image padded
        with 0, the mask with 255 (ignore)."""
        out_mask = _pad_into(mask, self.size, offset, IGNORE_INDEX)
        return _pad_into(image, self.size, offset, 0), out_mask

    def cut(self, values: torch.Tensor, geometry: CropGeometry) -> torch.Tensor:
        """A float CxHxW map of the whole image (at any resolution, e.g. a teacher's logits at
        the base framing) cut like the crop of `geometry`: resampled under the window, padded
        with 0, mirrored with it. The map of a mirrored crop must already be the mirror
        image's own map, mirrored back (so that only the geometry is applied here)."""
        out = self.scaled_map_window(values, geometry.scaled_hw, geometry.offset)
        out = _pad_into(out, self.size, geometry.offset, 0)
        return (out.flip(-1) if geometry.flip else out).contiguous()

    def apply(
        self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, CropGeometry]:
        """The augmented (image, mask) and the geometry of the crop (see `cut`)."""
        mask = mask.long()
        h, w = mask.shape
        s = self.scale_factor((h, w), generator)
        scaled = (max(1, round(h * s)), max(1, round(w * s)))
        offset = (
            _offset(scaled[0], self.size[0], generator),
            _offset(scaled[1], self.size[1], generator),
        )
        img, mask = self.scaled_window(image, mask, scaled, offset)
        img = normalize(self.jitter(img, generator))
        img, mask = self.place(img, mask, offset)
        flip = bool(torch.rand((), generator=generator) < 0.5) and self.augment.hflip
        if flip:
            img, mask = img.flip(-1), mask.flip(-1)
        return img.contiguous(), mask.contiguous(), CropGeometry(scaled, offset, flip)

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        img, mask, _ = self.apply(image, mask, generator)
        return img, mask


def _pad_into(
    values: torch.Tensor, size: Sequence[int], offset: Sequence[int], fill: float
) -> torch.Tensor:
    """Put the visible part of a crop (...xhxw) at its place in a crop of `size`, the rest
    `fill`."""
    ch, cw = int(size[0]), int(size[1])
    if tuple(values.shape[-2:]) == (ch, cw):
        return values
    dy, dx = max(-int(offset[0]), 0), max(-int(offset[1]), 0)
    nh, nw = values.shape[-2:]
    out = values.new_full((*values.shape[:-2], ch, cw), fill)
    out[..., dy : dy + nh, dx : dx + nw] = values
    return out


def _source_span(
    n: int, scaled: int, offset: int, crop: int
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Along one axis of an image of `n` pixels scaled to `scaled`, for a crop of `crop` at
    `offset`: (source window [a, b), its extent [ta, tb) in the scaled image, the visible crop
    [lo, hi) in the scaled image), with ``ta <= lo`` and ``hi <= tb``."""
    lo, hi = max(offset, 0), min(offset + crop, scaled)
    f = n / scaled  # source pixels per scaled pixel
    margin = math.ceil(f) + 1
    a = max(0, math.floor(lo * f) - margin)
    b = min(n, math.ceil(hi * f) + margin)
    ta = 0 if a == 0 else round(a / f)
    tb = scaled if b == n else round(b / f)
    return (a, b), (min(ta, lo), max(tb, hi)), (lo, hi)


def _offset(n: int, crop: int, generator: torch.Generator) -> int:
    """Top-left offset of the crop window: in [0, n-crop] if the input is bigger, else in
    [-(crop-n), 0] (the input is placed at a random position inside a padded crop)."""
    span = abs(n - crop)
    r = int(torch.randint(0, span + 1, (), generator=generator))
    return r if n >= crop else -r
