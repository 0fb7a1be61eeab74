"""Cross-entropy, focal and OHEM against hand computations on 1x2x2x2 logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distillery.losses import cross_entropy, focal_loss, ohem_loss

from .hand import pixels, softmax

# (N=1, C=2, H=2, W=2); pixel (1, 0) is ignored.
LOGITS = [[[[1.0, -0.5], [2.0, 0.3]], [[0.2, 0.7], [-1.0, 1.5]]]]
TARGET = [[[0, 1], [255, 0]]]
WEIGHTS = [0.3, 2.0]


def _tensors() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(LOGITS), torch.tensor(TARGET)


def _valid() -> list[tuple[list[float], int]]:
    """(class probabilities, label) of each valid pixel."""
    out = []
    for n, h, w, z in pixels(LOGITS):
        y = TARGET[n][h][w]
        if y != 255:
            out.append((softmax(z), y))
    return out


def test_cross_entropy_matches_hand_mean_over_valid_pixels() -> None:
    hand = sum(-math.log(p[y]) for p, y in _valid()) / len(_valid())
    assert cross_entropy(*_tensors()).item() == pytest.approx(hand, rel=1e-6)


def test_cross_entropy_with_class_weights_matches_hand() -> None:
    num = sum(WEIGHTS[y] * -math.log(p[y]) for p, y in _valid())
    den = sum(WEIGHTS[y] for _, y in _valid())
    got = cross_entropy(*_tensors(), class_weights=torch.tensor(WEIGHTS))
    assert got.item() == pytest.approx(num / den, rel=1e-6)


def test_cross_entropy_with_label_smoothing_and_weights_matches_hand() -> None:
    eps, c = 0.2, 2
    num = sum(
        (1 - eps) * WEIGHTS[y] * -math.log(p[y])
        + eps / c * sum(WEIGHTS[k] * -math.log(p[k]) for k in range(c))
        for p, y in _valid()
    )
    den = sum(WEIGHTS[y] for _, y in _valid())
    logits, target = _tensors()
    got = cross_entropy(logits, target, torch.tensor(WEIGHTS), label_smoothing=eps)
    assert got.item() == pytest.approx(num / den, rel=1e-6)
    # the same convention as torch's own cross-entropy
    ref = F.cross_entropy(
        logits, target, weight=torch.tensor(WEIGHTS), ignore_index=255, label_smoothing=eps
    )
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)


def test_label_smoothing_without_weights_matches_hand() -> None:
    eps = 0.1
    hand = sum(
        (1 - eps) * -math.log(p[y]) + eps / 2 * sum(-math.log(q) for q in p) for p, y in _valid()
    ) / len(_valid())
    got = cross_entropy(*_tensors(), label_smoothing=eps)
    assert got.item() == pytest.approx(hand, rel=1e-6)


def test_focal_matches_hand() -> None:
    gamma = 2.0
    hand = sum(-((1 - p[y]) ** gamma) * math.log(p[y]) for p, y in _valid()) / len(_valid())
    assert focal_loss(*_tensors(), gamma=gamma).item() == pytest.approx(hand, rel=1e-6)


def test_focal_with_class_weights_is_the_weighted_mean() -> None:
    gamma = 1.5
    num = sum(WEIGHTS[y] * -((1 - p[y]) ** gamma) * math.log(p[y]) for p, y in _valid())
    den = sum(WEIGHTS[y] for _, y in _valid())
    got = focal_loss(*_tensors(), gamma=gamma, class_weights=torch.tensor(WEIGHTS))
    assert got.item() == pytest.approx(num / den, rel=1e-6)


def test_focal_with_gamma_zero_is_cross_entropy() -> None:
    w = torch.tensor(WEIGHTS)
    assert focal_loss(*_tensors(), gamma=0.0, class_weights=w).item() == pytest.approx(
        cross_entropy(*_tensors(), class_weights=w).item(), rel=1e-6
    )


def test_focal_down_weights_easy_pixels() -> None:
    logits, target = _tensors()
    assert focal_loss(logits, target, gamma=2.0) < cross_entropy(logits, target)


def test_ohem_keeps_pixels_below_the_threshold() -> None:
    pts = sorted(p[y] for p, y in _valid())  # three valid pixels
    threshold = (pts[1] + pts[2]) / 2  # the two hardest are below it
    hand = sum(-math.log(q) for q in pts[:2]) / 2
    got = ohem_loss(*_tensors(), threshold=threshold, min_kept_fraction=0.1)
    assert got.item() == pytest.approx(hand, rel=1e-6)


def test_ohem_keeps_at_least_min_kept_fraction_of_the_hardest() -> None:
    pts = sorted(p[y] for p, y in _valid())
    # no pixel is below 1e-6; ceil(0.5 * 3) = 2 hardest are kept
    got = ohem_loss(*_tensors(), threshold=1e-6, min_kept_fraction=0.5)
    assert got.item() == pytest.approx(sum(-math.log(q) for q in pts[:2]) / 2, rel=1e-6)
    got = ohem_loss(*_tensors(), threshold=1e-6, min_kept_fraction=0.2)  # ceil(0.6) = 1
    assert got.item() == pytest.approx(-math.log(pts[0]), rel=1e-6)


def test_ohem_keeping_everything_is_cross_entropy() -> None:
    w = torch.tensor(WEIGHTS)
    got = ohem_loss(*_tensors(), threshold=1.0, min_kept_fraction=1.0, class_weights=w)
    assert got.item() == pytest.approx(cross_entropy(*_tensors(), class_weights=w).item())


def test_ohem_never_keeps_ignored_pixels() -> None:
    logits, target = _tensors()
    logits[0, :, 1, 0] = torch.tensor([-30.0, 30.0])  # would be the hardest if it counted
    pts = sorted(p[y] for p, y in _valid())
    got = ohem_loss(logits, target, threshold=1e-6, min_kept_fraction=0.2)
    assert got.item() == pytest.approx(-math.log(pts[0]), rel=1e-6)


@pytest.mark.parametrize("fn", [cross_entropy, focal_loss, ohem_loss])
def test_ignored_pixels_contribute_nothing(fn) -> None:  # noqa: ANN001
    logits, target = _tensors()
    before = fn(logits, target)
    logits[0, :, 1, 0] = torch.tensor([50.0, -50.0])
    assert torch.equal(fn(logits, target), before)


@pytest.mark.parametrize("fn", [cross_entropy, focal_loss, ohem_loss])
def test_all_ignored_gives_zero_and_a_zero_gradient(fn) -> None:  # noqa: ANN001
    logits = torch.tensor(LOGITS, requires_grad=True)
    loss = fn(logits, torch.full((1, 2, 2), 255))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_gradient_is_zero_at_ignored_pixels_and_not_elsewhere() -> None:
    logits = torch.tensor(LOGITS, requires_grad=True)
    cross_entropy(logits, torch.tensor(TARGET)).backward()
    assert torch.equal(logits.grad[0, :, 1, 0], torch.zeros(2))
    assert logits.grad[0, :, 0, 0].abs().sum() > 0


def test_bad_targets_are_clear_errors() -> None:
    logits, target = _tensors()
    target[0, 0, 0] = 5
    with pytest.raises(ValueError, match=r"labels \[5\] outside \[0, 2\)"):
        cross_entropy(logits, target)
    with pytest.raises(ValueError, match="does not match logits"):
        cross_entropy(logits, torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer class indices"):
        cross_entropy(logits, torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="class_weights must have shape"):
        cross_entropy(*_tensors(), class_weights=torch.ones(3))
    with pytest.raises(ValueError, match="label_smoothing"):
        cross_entropy(*_tensors(), label_smoothing=1.0)
    with pytest.raises(ValueError, match="min_kept_fraction"):
        ohem_loss(*_tensors(), min_kept_fraction=0.0)


def test_uint8_targets_and_custom_ignore_index() -> None:
    logits, target = _tensors()
    as_u8 = cross_entropy(logits, target.to(torch.uint8))
    assert as_u8.item() == pytest.approx(cross_entropy(logits, target).item())
    other = target.clone()
    other[other == 255] = 7
    got = cross_entropy(logits, other, ignore_index=7)
    assert got.item() == pytest.approx(cross_entropy(logits, target).item())


def test_half_precision_inputs_are_computed_in_float32() -> None:
    logits, target = _tensors()
    got = cross_entropy(logits.to(torch.bfloat16), target)
    assert got.dtype == torch.float32
    ref = cross_entropy(logits.to(torch.bfloat16).float(), target)
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
