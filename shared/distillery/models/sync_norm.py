"""BatchNorm statistics over the global batch of all processes (multi-process training).

With 1-2 crops per GPU, per-process BatchNorm statistics are noise. `convert_sync_batchnorm`
swaps every ``BatchNorm*d`` for a synchronised one: ``torch.nn.SyncBatchNorm`` on CUDA, and on
the CPU (gloo, where SyncBatchNorm refuses to run) `GlobalBatchNorm`, the same computation with
an autograd-aware all-reduce. Running statistics, weights and state-dict keys are unchanged, so
exported models load into plain BatchNorm.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of each input is the sum of the outputs' gradients."""

    @staticmethod
    def forward(ctx: object, x: Tensor) -> Tensor:  # noqa: ARG004
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> Tensor:  # noqa: ARG004
        g = grad.clone()
        dist.all_reduce(g)
        return g


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the batch of every process.

    Per channel c over all processes' N*H*W values x: ``n = sum 1``, ``mean = sum x / n``,
    ``var = sum x^2 / n - mean^2`` (biased, used to normalise); the running variance gets the
    unbiased ``var * n / (n - 1)``, as in ``BatchNorm2d``. The sums are all-reduced with
    autograd, so gradients flow through the other processes' statistics too. In eval mode, or
    without an initialised process group, it is plain BatchNorm2d.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        xf = x.float()
        count = xf.new_full((1,), xf.numel() // c)
        stats = torch.cat([xf.sum((0, 2, 3)), xf.pow(2).sum((0, 2, 3)), count])
        stats = _AllReduceSum.apply(stats)  # sum over processes, differentiable
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean.pow(2)).clamp_min(0.0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                assert self.num_batches_tracked is not None and self.running_var is not None
                self.num_batches_tracked.add_(1)
                m = (
                    self.momentum
                    if self.momentum is not None
                    else 1.0 / float(self.num_batches_tracked)
                )
                unbiased = var.detach() * n / (n - 1).clamp_min(1.0)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        shape = (1, c, 1, 1)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def _to_global(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm):
        out = GlobalBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
        out.load_state_dict(module.state_dict())
        out.train(module.training)
        out.requires_grad_(any(p.requires_grad for p in module.parameters()))
    for name, child in module.named_children():
        out.add_module(name, _to_global(child))
    return out


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` with every BatchNorm synchronised over the process group (see the module doc)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _to_global(model)


def count_synced(model: nn.Module) -> int:
    """How many norm layers of `model` are synchronised."""
    return sum(isinstance(m, nn.SyncBatchNorm | GlobalBatchNorm) for m in model.modules())
