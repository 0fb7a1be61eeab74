"""One base class fixes the flow of every segmentation model: encoder, bottleneck, decoder, head.

Feature taps are module names: `encoder.<i>`, `bottleneck`, `decoder.<i>` are submodules, so
`model.get_submodule("encoder.2")` is the tap and a forward hook reads it (see `FeatureTaps`).
`logits` names the model's output.
"""

from __future__ import annotations

import torch
from torch import nn


class SegmentationModel(nn.Module):
    """Subclasses set `encoder` (ModuleList), `bottleneck`, `decoder` (ModuleList), `head`,
    `downsample` and `upsample_to_skip`, and fill `feature_channels`."""

    encoder: nn.ModuleList
    bottleneck: nn.Module
    decoder: nn.ModuleList
    head: nn.Module
    num_classes: int
    depth: int
    #: tap name -> channels of that feature map.
    feature_channels: dict[str, int]

    @property
    def downsample_factor(self) -> int:
        return 2**self.depth

    @property
    def tap_names(self) -> list[str]:
        return [*self.feature_channels, "logits"]

    def tap_channels(self, tap: str) -> int:
        if tap == "logits":
            return self.num_classes
        try:
            return self.feature_channels[tap]
        except KeyError:
            raise KeyError(
                f"unknown tap {tap!r}; this model has {', '.join(self.tap_names)}"
            ) from None

    def tap_stride(self, tap: str) -> int:
        """Down-sampling factor of a tap's feature map relative to the input."""
        if tap == "logits":
            return 1
        kind, _, idx = tap.partition(".")
        if kind == "encoder":
            return 2 ** int(idx)
        if kind == "bottleneck":
            return 2**self.depth
        if kind == "decoder":
            return 2 ** (self.depth - 1 - int(idx))
        raise KeyError(tap)

    def check_input(self, x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        f = self.downsample_factor
        if h % f or w % f:
            raise ValueError(
                f"input size {h}x{w} is not divisible by {f}, the downsampling factor of this "
                f"depth-{self.depth} {type(self).__name__}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        skips = []
        for i, stage in enumerate(self.encoder):
            x = stage(x if i == 0 else self.downsample(x))
            skips.append(x)
        x = self.bottleneck(self.downsample(x))
        for stage, skip in zip(self.decoder, reversed(skips), strict=True):
            x = stage(x, skip)
        return self.head(x)
