"""Profiler tests: one torch thread (on a 2-core machine shared with other jobs, two OpenMP threads
wait on each other whenever one is descheduled, which makes timings erratic), and a private
matmul-peak cache seeded with a quick, small measurement."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distillery.profiler.peak import matmul_peak


@pytest.fixture(autouse=True, scope="session")
def _profiler_env(tmp_path_factory: pytest.TempPathFactory):
    mp = pytest.MonkeyPatch()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    mp.setenv("DISTILLERY_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    for precision in ("fp32", "bf16"):
        matmul_peak(torch.device("cpu"), precision, size=512, repeats=2)
    yield
    torch.set_num_threads(threads)
    mp.undo()


def make_conv_stack(depth: int, channels: int = 16) -> nn.Sequential:
    """A 3 -> `channels` 3x3 stem, then `depth` `channels` -> `channels` 3x3 convolutions (no
    bias), ReLUs between: FLOPs per image at HxW are
    2*9*3*C*H*W + depth * 2*9*C*C*H*W (1 multiply-add = 2 FLOPs)."""
    layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1, bias=False), nn.ReLU()]
    for _ in range(depth):
        layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.ReLU()]
    return nn.Sequential(*layers)


@pytest.fixture
def conv_stack():
    return make_conv_stack
