"""Parameter count and FLOPs of a model at an input size.

FLOPs follow `torch.utils.flop_counter`: one multiply-add counts as 2 FLOPs (a 3x3 conv from
Cin to Cout over H x W outputs is 2 * 9 * Cin * Cout * H * W); element-wise ops, norms and
activations are not counted.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, input_size: tuple[int, int], batch_size: int = 1) -> int:
    """FLOPs of one forward pass at (height, width) for `batch_size` images."""
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        x = torch.zeros(batch_size, 3, *input_size, device=p.device, dtype=p.dtype)
        with FlopCounterMode(display=False) as counter:
            model(x)
        return int(counter.get_total_flops())
    finally:
        model.train(was_training)
