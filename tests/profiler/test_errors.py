"""Bad input: clear errors that name the problem."""

from __future__ import annotations

import pytest
import torch

from distillery.models import UNet
from distillery.profiler import DeviceError, profile_model, resolve_device
from distillery.spec import ProfilingSpec


def test_input_size_not_divisible_by_the_downsampling_factor():
    with pytest.raises(ValueError, match=r"input_size 40x64 is not divisible by 16.*depth-4"):
        profile_model(UNet(width=4, depth=4), ProfilingSpec(), device="cpu", input_size=(40, 64))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_on_a_machine_without_one():
    with pytest.raises(DeviceError, match=r"'cuda' requested but torch.cuda.is_available\(\)"):
        profile_model(UNet(width=4, depth=2), ProfilingSpec(), device="cuda")
    with pytest.raises(DeviceError, match="cuda:1"):
        resolve_device("cuda:1")


@pytest.mark.parametrize("name", ["tpu", "mps", "not a device"])
def test_unknown_devices(name: str):
    with pytest.raises(DeviceError, match="cpu"):
        resolve_device(name)


def test_auto_device_resolves():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")


def test_bad_batch_sizes():
    with pytest.raises(ValueError, match="batch_sizes"):
        profile_model(UNet(width=4, depth=2), ProfilingSpec(), device="cpu", batch_sizes=[0])
