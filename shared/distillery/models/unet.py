"""UNet with configurable depth, width, norm, upsampling and separable convolutions."""

from __future__ import annotations

from torch import nn

from distillery.models.base import SegmentationModel
from distillery.models.blocks import ConvBlock, UpBlock


class UNet(SegmentationModel):
    """Level i has `width * 2**i` channels at 1/2**i resolution; the bottleneck is at 1/2**depth.

    Taps: `encoder.0..depth-1`, `bottleneck`, `decoder.0..depth-1` (decoder.0 is the coarsest).
    """

    def __init__(
        self,
        num_classes: int = 19,
        depth: int = 4,
        width: int = 16,
        norm: str = "batch",
        upsample: str = "bilinear",
        separable: bool = False,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"depth and width must be >= 1, got depth={depth}, width={width}")
        self.num_classes, self.depth, self.width = num_classes, depth, width
        ch = [width * 2**i for i in range(depth + 1)]
        self.downsample = nn.MaxPool2d(2)
        self.encoder = nn.ModuleList(
            ConvBlock(
                in_channels if i == 0 else ch[i - 1], ch[i], norm, separable=separable and i > 0
            )
            for i in range(depth)
        )
        self.bottleneck = ConvBlock(ch[depth - 1], ch[depth], norm, separable)
        self.decoder = nn.ModuleList(
            UpBlock(ch[depth - j], ch[depth - 1 - j], ch[depth - 1 - j], norm, separable, upsample)
            for j in range(depth)
        )
        self.head = nn.Conv2d(ch[0], num_classes, 1)
        self.feature_channels = {
            **{f"encoder.{i}": ch[i] for i in range(depth)},
            "bottleneck": ch[depth],
            **{f"decoder.{j}": ch[depth - 1 - j] for j in range(depth)},
        }
