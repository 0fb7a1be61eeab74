"""DIST (inter- and intra-class Pearson relations) against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from distillery.losses import Objective, dist_loss
from distillery.losses.output import ModelOutput
from distillery.models import UNet
from distillery.spec import CrossEntropyTerm, DistillationSpec, DISTTerm

from .hand import pearson, pixels, softmax

# (N=1, C=3, H=2, W=2)
STUDENT = [
    [
        [[1.0, -0.5], [2.0, 0.3]],
        [[0.2, 0.7], [-1.0, 1.5]],
        [[0.0, 0.4], [0.9, -0.8]],
    ]
]
TEACHER = [
    [
        [[0.4, 1.2], [-0.3, 2.5]],
        [[1.1, -0.9], [0.6, 0.0]],
        [[-0.7, 0.3], [1.4, 0.2]],
    ]
]
TARGET = [[[0, 1], [255, 2]]]


def _probs(logits: list, t: float, keep=None) -> list[list[float]]:
    """Rows of softmax(z / T), one per pixel (row-major), kept where keep(n, h, w)."""
    return [
        softmax([z / t for z in zs])
        for n, h, w, zs in pixels(logits)
        if keep is None or keep(n, h, w)
    ]


def _hand(t: float, beta: float, gamma: float, keep=None) -> float:
    ys, yt = _probs(STUDENT, t, keep), _probs(TEACHER, t, keep)
    inter = 1 - sum(pearson(a, b) for a, b in zip(ys, yt, strict=True)) / len(ys)
    classes = range(len(ys[0]))
    intra = 1 - sum(pearson([r[c] for r in ys], [r[c] for r in yt]) for c in classes) / 3
    return t * t * (beta * inter + gamma * intra)


@pytest.mark.parametrize(("t", "beta", "gamma"), [(1.0, 1.0, 1.0), (4.0, 2.0, 0.5), (2.0, 0, 1)])
def test_dist_matches_hand_over_all_pixels(t: float, beta: float, gamma: float) -> None:
    got = dist_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), t, beta, gamma)
    assert got.item() == pytest.approx(_hand(t, beta, gamma), rel=1e-5)


def test_dist_matches_hand_over_valid_pixels_and_ignores_the_rest() -> None:
    y = torch.tensor(TARGET)
    hand = _hand(2.0, 1.0, 1.0, keep=lambda n, h, w: TARGET[n][h][w] != 255)
    s, te = torch.tensor(STUDENT), torch.tensor(TEACHER)
    got = dist_loss(s, te, 2.0, target=y)
    assert got.item() == pytest.approx(hand, rel=1e-5)
    assert got.item() != pytest.approx(dist_loss(s, te, 2.0).item(), rel=1e-3)
    s[0, :, 1, 0] = torch.tensor([40.0, -40.0, 0.0])
    assert dist_loss(s, te, 2.0, target=y).item() == pytest.approx(got.item(), rel=1e-6)


def test_dist_known_values() -> None:
    s = torch.tensor(STUDENT)
    # identical probabilities correlate perfectly: both relations are 0 (up to the eps of rho)
    assert dist_loss(s, s.clone(), 1.0).item() == pytest.approx(0.0, abs=1e-5)
    # correlation, not distance: a sharper student with the same ranking pattern scores near 0 on
    # the inter-class term, while KL would not be 0
    inter_only = dist_loss(2 * s, s, 1.0, beta=1.0, gamma=0.0).item()
    assert 0 <= inter_only < 0.1
    # every loss lies in [0, 2 T^2 (beta + gamma)]
    assert 0 < dist_loss(s, torch.tensor(TEACHER), 1.0).item() <= 4.0
    empty = torch.full((1, 2, 2), 255)
    zero = dist_loss(s.requires_grad_(), torch.tensor(TEACHER), 1.0, target=empty)
    assert zero.item() == 0.0
    zero.backward()  # still in the graph


def test_dist_gradient_and_errors() -> None:
    s = torch.tensor(STUDENT, requires_grad=True)
    dist_loss(s, torch.tensor(TEACHER), 1.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="differ in shape"):
        dist_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 4, 4), 1.0)
    with pytest.raises(ValueError, match="temperature"):
        dist_loss(s, s, 0.0)
    with pytest.raises(ValueError, match="beta and gamma"):
        dist_loss(s, s, 1.0, beta=-1.0)


def test_dist_under_bf16_autocast_is_float32() -> None:
    s, t = torch.tensor(STUDENT), torch.tensor(TEACHER)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = dist_loss(s.to(torch.bfloat16), t.to(torch.bfloat16), 2.0)
    assert got.dtype == torch.float32 and math.isfinite(got.item())


def test_dist_term_in_the_objective_and_the_spec() -> None:
    spec = DistillationSpec.model_validate(
        {"losses": [{"kind": "dist", "weight": 2.0, "temperature": 1.0, "beta": 2.0}]}
    )
    term = spec.losses[0]
    assert isinstance(term, DISTTerm) and (term.gamma, term.beta) == (1.0, 2.0)
    torch.manual_seed(0)
    student, teacher = UNet(num_classes=3, depth=2, width=4), UNet(num_classes=3, depth=2, width=8)
    objective = Objective([CrossEntropyTerm(), term], student, teacher)
    assert objective.names == ["cross_entropy", "dist"] and objective.teacher_taps == []
    images = torch.randn(2, 3, 16, 32)
    target = torch.randint(0, 3, (2, 16, 32))
    target[:, :2] = 255
    s, t = ModelOutput(student(images)), ModelOutput(teacher(images))
    total, parts = objective(s, target, t)
    expect = dist_loss(s.logits, t.logits, 1.0, 2.0, 1.0, target=target)
    assert parts["dist"].item() == pytest.approx(expect.item(), rel=1e-6)
    assert total.item() == pytest.approx(
        parts["cross_entropy"].item() + 2 * expect.item(), rel=1e-5
    )
    total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    with pytest.raises(ValueError, match="dist"):
        DistillationSpec.model_validate({"losses": [{"kind": "dist", "temperature": 0}]})
