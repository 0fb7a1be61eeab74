"""Mean pixel entropy (metric) and the confidence penalty, against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from distillery.losses import confidence_penalty, mean_entropy

from .hand import pixels, softmax

LOGITS = [[[[1.0, -0.5], [2.0, 0.3]], [[0.2, 0.7], [-1.0, 1.5]]]]
TARGET = [[[0, 1], [255, 0]]]


def _entropy(z: list[float]) -> float:
    return -sum(p * math.log(p) for p in softmax(z))


def test_mean_entropy_over_all_pixels_matches_hand() -> None:
    hand = [_entropy(z) for *_, z in pixels(LOGITS)]
    assert mean_entropy(torch.tensor(LOGITS)).item() == pytest.approx(sum(hand) / 4, rel=1e-6)


def test_mean_entropy_over_valid_pixels_matches_hand() -> None:
    hand = [_entropy(z) for n, h, w, z in pixels(LOGITS) if TARGET[n][h][w] != 255]
    got = mean_entropy(torch.tensor(LOGITS), torch.tensor(TARGET))
    assert got.item() == pytest.approx(sum(hand) / 3, rel=1e-6)


def test_uniform_logits_have_entropy_log_c_and_one_hot_zero() -> None:
    assert mean_entropy(torch.zeros(2, 19, 3, 5)).item() == pytest.approx(math.log(19), rel=1e-6)
    peaked = torch.zeros(1, 4, 2, 2)
    peaked[:, 0] = 100.0
    assert mean_entropy(peaked).item() == pytest.approx(0.0, abs=1e-6)


def test_confidence_penalty_is_minus_the_mean_entropy() -> None:
    logits, target = torch.tensor(LOGITS), torch.tensor(TARGET)
    assert confidence_penalty(logits, target).item() == pytest.approx(
        -mean_entropy(logits, target).item()
    )


def test_minimising_the_confidence_penalty_raises_entropy() -> None:
    logits = torch.tensor(LOGITS, requires_grad=True)
    before = mean_entropy(logits).item()
    confidence_penalty(logits).backward()
    with torch.no_grad():
        logits -= 0.1 * logits.grad
    assert mean_entropy(logits).item() > before


def test_ignored_pixels_do_not_change_entropy() -> None:
    logits, target = torch.tensor(LOGITS), torch.tensor(TARGET)
    before = mean_entropy(logits, target)
    logits[0, :, 1, 0] = torch.tensor([9.0, -9.0])
    assert torch.equal(mean_entropy(logits, target), before)
    assert mean_entropy(logits, torch.full((1, 2, 2), 255)).item() == 0.0
