"""The UNet family: shapes, taps by module name, options, parameter scaling."""

import pytest
import torch

from distillery.models import FeatureTaps, UNet, build_model
from distillery.models.complexity import count_parameters
from distillery.spec import ModelSpec


@pytest.mark.parametrize("upsample", ["bilinear", "transpose"])
@pytest.mark.parametrize("norm", ["batch", "group"])
@pytest.mark.parametrize("separable", [False, True])
def test_output_shape_and_taps(upsample: str, norm: str, separable: bool) -> None:
    model = UNet(depth=3, width=4, norm=norm, upsample=upsample, separable=separable)
    x = torch.randn(2, 3, 32, 64)
    with FeatureTaps(model, model.tap_names) as taps:
        y = model(x)
    assert y.shape == (2, 19, 32, 64)
    assert set(taps.features) == {
        "encoder.0",
        "encoder.1",
        "encoder.2",
        "bottleneck",
        "decoder.0",
        "decoder.1",
        "decoder.2",
    }
    for name, f in taps.features.items():
        stride = model.tap_stride(name)
        assert f.shape == (2, model.tap_channels(name), 32 // stride, 64 // stride), name


def test_taps_are_module_names_and_hooks_are_removed() -> None:
    model = UNet(depth=2, width=4)
    assert model.get_submodule("decoder.1") is model.decoder[1]
    with FeatureTaps(model, ["bottleneck"]):
        pass
    assert not model.bottleneck._forward_hooks
    with pytest.raises(KeyError, match="encoder.7"), FeatureTaps(model, ["encoder.7"]):
        pass


def test_width_scales_parameters_quadratically() -> None:
    small, big = (count_parameters(UNet(depth=4, width=w)) for w in (4, 16))
    assert 12 < big / small < 17


def test_separable_is_smaller() -> None:
    dense = count_parameters(UNet(depth=3, width=16))
    sep = count_parameters(UNet(depth=3, width=16, separable=True))
    assert sep < 0.5 * dense


def test_input_not_divisible_by_downsampling_factor() -> None:
    with pytest.raises(ValueError, match="not divisible by 16"):
        UNet(depth=4, width=4)(torch.randn(1, 3, 40, 64))


def test_build_model_from_spec_and_auto_width() -> None:
    m = build_model(ModelSpec(depth=2, width=4, norm="group"))
    assert isinstance(m, UNet) and m.width == 4
    with pytest.raises(ValueError, match="auto"):
        build_model(ModelSpec(width="auto"))
    assert build_model(ModelSpec(width="auto"), width=8).width == 8
