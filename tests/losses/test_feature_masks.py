"""Feature-level terms leave out ignored pixels and the 255-padded border of a crop: changing
the student's features there changes no loss."""

from __future__ import annotations

import pytest
import torch

from distillery.losses import ModelOutput, build_objective
from distillery.losses.features import attention_transfer, feature_mse, valid_fraction
from distillery.models import build_model
from distillery.spec import ModelSpec

TAP = {"student_tap": "bottleneck", "teacher_tap": "bottleneck"}
TERMS = {
    "feature_mse/bottleneck": {"kind": "feature_mse", **TAP},
    "attention_transfer/bottleneck": {"kind": "attention_transfer", **TAP},
    "channel_wise_kd/bottleneck": {"kind": "channel_wise_kd", "tap": "bottleneck"},
}


def _target() -> torch.Tensor:
    """(2, 16, 32) labels with the right half padded (255), as a crop past the image edge."""
    target = torch.randint(0, 19, (2, 16, 32), generator=torch.Generator().manual_seed(0))
    target[:, :, 16:] = 255
    return target


@pytest.mark.parametrize("name", list(TERMS))
def test_student_features_over_ignored_pixels_do_not_count(name: str) -> None:
    model = build_model(ModelSpec(width=4, depth=2))
    objective = build_objective([TERMS[name]], model, model)
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 16, 4, 8, generator=g)  # bottleneck: 1/4 of 16x32
    t = torch.randn(2, 16, 4, 8, generator=g)
    logits = torch.randn(2, 19, 16, 32, generator=g)
    changed = s.clone()
    changed[..., 4:] = 100 * torch.randn(2, 16, 4, 4, generator=g)  # under the padded half only

    def loss(student: torch.Tensor) -> float:
        out = ModelOutput(logits, {"bottleneck": student})
        ref = ModelOutput(logits, {"bottleneck": t})
        return objective(out, _target(), ref)[1][name].item()

    assert loss(changed) == pytest.approx(loss(s), rel=1e-6)
    assert loss(s) > 0


def test_valid_fraction_and_the_weighted_formulas() -> None:
    w = valid_fraction(_target(), (4, 8), 255)
    assert w.shape == (2, 4, 8) and torch.equal(w[..., :4], torch.ones(2, 4, 4))
    assert torch.equal(w[..., 4:], torch.zeros(2, 4, 4))
    s, t = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 8)
    hand = ((s - t) ** 2)[..., :4].mean()
    assert feature_mse(s, t, w).item() == pytest.approx(hand.item(), rel=1e-6)
    assert feature_mse(s, t, torch.ones(2, 4, 8)).item() == pytest.approx(
        feature_mse(s, t).item(), rel=1e-6
    )
    assert attention_transfer(s, t, torch.ones(2, 4, 8)).item() == pytest.approx(
        attention_transfer(s, t).item(), rel=1e-6
    )
