"""FLOPs: hand counts (1 multiply-add = 2 FLOPs, the torch.utils.flop_counter convention)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distillery.models import UNet
from distillery.profiler import model_flops, model_info


def test_conv_stack_flops_match_the_hand_count(conv_stack):
    h, w, c, depth = 32, 64, 16, 3
    model = nn.Sequential(
        conv_stack(depth, c),
        nn.Conv2d(c, 8, 5, padding=2, bias=False),
    )
    # 2 * k * k * Cin * Cout * H * W per conv (stride 1, 'same' padding)
    expected = (
        2 * 3 * 3 * 3 * c * h * w + depth * 2 * 3 * 3 * c * c * h * w + 2 * 5 * 5 * c * 8 * h * w
    )
    assert model_flops(model, (h, w)) == expected
    info = model_info(model, (h, w))
    assert info.flops_per_image == expected
    assert info.params == 3 * 3 * 3 * c + depth * 9 * c * c + 25 * c * 8
    assert "1 multiply-add = 2 FLOPs" in info.flop_convention


def conv_flops_by_hooks(model: nn.Module, size: tuple[int, int]) -> int:
    """Sum over every conv layer of 2 * (Cin/groups) * Cout * kh * kw * Hout * Wout (transposed:
    2 * Cin * (Cout/groups) * kh * kw * Hin * Win), from the shapes seen by forward hooks."""
    total = 0

    def hook(m: nn.Module, inputs: tuple[torch.Tensor], out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        if isinstance(m, nn.ConvTranspose2d):
            hin, win = inputs[0].shape[-2:]
            total += 2 * m.in_channels * (m.out_channels // m.groups) * kh * kw * hin * win
        else:
            hout, wout = out.shape[-2:]
            total += 2 * (m.in_channels // m.groups) * m.out_channels * kh * kw * hout * wout

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, *size))
    for hd in handles:
        hd.remove()
    return total


@pytest.mark.parametrize("separable", [False, True])
@pytest.mark.parametrize("upsample", ["bilinear", "transpose"])
def test_unet_flops_are_the_sum_over_its_convolutions(separable: bool, upsample: str):
    model = UNet(width=4, depth=3, separable=separable, upsample=upsample)
    assert model_flops(model, (32, 64)) == conv_flops_by_hooks(model, (32, 64))


def test_separable_unet_needs_fewer_flops_than_dense():
    dense = model_flops(UNet(width=8, depth=3), (32, 64))
    separable = model_flops(UNet(width=8, depth=3, separable=True), (32, 64))
    assert separable < dense / 2


def test_flops_scale_with_pixels():
    model = UNet(width=4, depth=2)
    assert model_flops(model, (64, 128)) == 4 * model_flops(model, (32, 64))
