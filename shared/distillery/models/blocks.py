"""Building blocks of the UNet family."""

from __future__ import annotations

import math

import torch
from torch import nn


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels)
    raise ValueError(f"unknown norm {kind!r}; use batch or group")


def conv3x3(cin: int, cout: int, separable: bool) -> nn.Module:
    """A 3x3 convolution; depthwise-separable (3x3 depthwise + 1x1 pointwise) if asked."""
    if not separable:
        return nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
        nn.Conv2d(cin, cout, 1, bias=False),
    )


class ConvBlock(nn.Sequential):
    """(conv3x3 -> norm -> ReLU) x 2."""

    def __init__(self, cin: int, cout: int, norm: str, separable: bool) -> None:
        super().__init__(
            conv3x3(cin, cout, separable),
            norm_layer(norm, cout),
            nn.ReLU(inplace=True),
            conv3x3(cout, cout, separable),
            norm_layer(norm, cout),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """Upsample x2 (transposed conv, or bilinear + 1x1 conv), concatenate the skip, ConvBlock."""

    def __init__(
        self, cin: int, cskip: int, cout: int, norm: str, separable: bool, upsample: str
    ) -> None:
        super().__init__()
        if upsample == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(cin, cskip, 2, stride=2)
        elif upsample == "bilinear":
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(cin, cskip, 1, bias=False),
            )
        else:
            raise ValueError(f"unknown upsample {upsample!r}; use transpose or bilinear")
        self.conv = ConvBlock(2 * cskip, cout, norm, separable)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))
