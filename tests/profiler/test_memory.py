"""Peak memory of a call on the CPU (resident-set high-water mark, or sampled RSS)."""

from __future__ import annotations

import time

import pytest
import torch

from distillery.profiler.memory import _sampled, _status_kb, peak_memory_mb

CPU = torch.device("cpu")


def allocate_64mb() -> None:
    x = torch.ones(16 * 2**20)  # 64 MiB, touched
    time.sleep(0.02)
    del x


def test_high_water_mark_sees_a_64mb_tensor():
    mb, method = peak_memory_mb(allocate_64mb, CPU)
    assert 60 <= mb < 130, (mb, method)
    small, _ = peak_memory_mb(lambda: torch.ones(16), CPU)
    assert small < 10


@pytest.mark.skipif(_status_kb("VmRSS") is None, reason="no /proc/self/status")
def test_sampled_rss_sees_a_64mb_tensor():
    mb = _sampled(allocate_64mb, _status_kb("VmRSS"))
    assert 60 <= mb < 130
