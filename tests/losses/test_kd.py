"""Logit KD and channel-wise KD against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from distillery.losses import channel_wise_kd, logit_kd

from .hand import kl, pixel, pixels, softmax

STUDENT = [[[[1.0, -0.5], [2.0, 0.3]], [[0.2, 0.7], [-1.0, 1.5]]]]
TEACHER = [[[[0.4, 1.2], [-0.3, 2.5]], [[1.1, -0.9], [0.6, 0.0]]]]
TARGET = [[[0, 1], [255, 0]]]


def _scaled(z: list[float], t: float) -> list[float]:
    return [v / t for v in z]


# ------------------------------------------------------------------------------------- logit KD


def test_logit_kd_matches_hand_over_all_pixels() -> None:
    t = 2.0
    kls = [
        kl(softmax(_scaled(pixel(TEACHER, n, h, w), t)), softmax(_scaled(zs, t)))
        for n, h, w, zs in pixels(STUDENT)
    ]
    hand = sum(kls) / len(kls) * t * t
    got = logit_kd(torch.tensor(STUDENT), torch.tensor(TEACHER), t)
    assert got.item() == pytest.approx(hand, rel=1e-6)


def test_logit_kd_matches_hand_over_valid_pixels() -> None:
    t = 4.0
    kls = [
        kl(softmax(_scaled(pixel(TEACHER, n, h, w), t)), softmax(_scaled(zs, t)))
        for n, h, w, zs in pixels(STUDENT)
        if TARGET[n][h][w] != 255
    ]
    hand = sum(kls) / 3 * t * t
    got = logit_kd(torch.tensor(STUDENT), torch.tensor(TEACHER), t, target=torch.tensor(TARGET))
    assert got.item() == pytest.approx(hand, rel=1e-6)


def test_logit_kd_is_zero_for_identical_logits_and_positive_otherwise() -> None:
    s = torch.tensor(STUDENT)
    assert logit_kd(s, s.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-7)
    assert logit_kd(s, torch.tensor(TEACHER), 4.0).item() > 0
    # shifting every logit of a pixel by a constant leaves its softmax unchanged
    assert logit_kd(s + 3.0, s, 1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_logit_kd_ignores_ignored_pixels() -> None:
    s, t, y = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(TARGET)
    before = logit_kd(s, t, 2.0, target=y)
    s[0, :, 1, 0] = torch.tensor([40.0, -40.0])
    t[0, :, 1, 0] = torch.tensor([-40.0, 40.0])
    assert torch.equal(logit_kd(s, t, 2.0, target=y), before)


def test_logit_kd_gradient_reaches_both_arguments_called_directly() -> None:
    s = torch.tensor(STUDENT, requires_grad=True)
    t = torch.tensor(TEACHER, requires_grad=True)
    logit_kd(s, t, 2.0).backward()
    assert s.grad.abs().sum() > 0 and t.grad.abs().sum() > 0


def test_logit_kd_rejects_mismatched_shapes_and_bad_temperature() -> None:
    s = torch.zeros(1, 2, 2, 2)
    with pytest.raises(ValueError, match="resize the student's to the teacher's size"):
        logit_kd(s, torch.zeros(1, 2, 4, 4), 1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        logit_kd(s, torch.zeros(1, 3, 2, 2), 1.0)
    with pytest.raises(ValueError, match="temperature"):
        logit_kd(s, s, 0.0)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        logit_kd(s[0], s[0], 1.0)


def test_logit_kd_under_bf16_autocast_is_float32() -> None:
    s, t = torch.tensor(STUDENT), torch.tensor(TEACHER)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = logit_kd(s.to(torch.bfloat16), t.to(torch.bfloat16), 2.0)
    assert got.dtype == torch.float32 and math.isfinite(got.item())


# ------------------------------------------------------------------------------------------ CWD


def _channel(m: list, n: int, c: int) -> list[float]:
    """Channel c of image n flattened over positions (row-major)."""
    return [v for row in m[n][c] for v in row]


def test_cwd_matches_hand() -> None:
    t = 3.0
    kls = []
    for c in range(2):
        p_t = softmax(_scaled(_channel(TEACHER, 0, c), t))
        p_s = softmax(_scaled(_channel(STUDENT, 0, c), t))
        kls.append(kl(p_t, p_s))
    hand = sum(kls) / (1 * 2) * t * t
    got = channel_wise_kd(torch.tensor(STUDENT), torch.tensor(TEACHER), t)
    assert got.item() == pytest.approx(hand, rel=1e-6)


def test_cwd_averages_over_images_and_channels() -> None:
    # (N=2, C=1, H=1, W=3)
    s = [[[[0.0, 1.0, 2.0]]], [[[1.0, 1.0, -1.0]]]]
    te = [[[[2.0, 0.0, 1.0]]], [[[0.5, -0.5, 3.0]]]]
    t = 1.0
    kls = [kl(softmax(_channel(te, n, 0)), softmax(_channel(s, n, 0))) for n in range(2)]
    got = channel_wise_kd(torch.tensor(s), torch.tensor(te), t)
    assert got.item() == pytest.approx(sum(kls) / 2, rel=1e-6)


def test_cwd_with_a_mask_leaves_positions_out_of_the_softmax() -> None:
    t = 2.0
    keep = [0, 1, 3]  # position (1, 0) = flat index 2 is masked out
    kls = []
    for c in range(2):
        tc = [_channel(TEACHER, 0, c)[j] / t for j in keep]
        sc = [_channel(STUDENT, 0, c)[j] / t for j in keep]
        kls.append(kl(softmax(tc), softmax(sc)))
    hand = sum(kls) / 2 * t * t
    mask = torch.tensor(TARGET) != 255
    got = channel_wise_kd(torch.tensor(STUDENT), torch.tensor(TEACHER), t, mask=mask)
    assert got.item() == pytest.approx(hand, rel=1e-6)
    s = torch.tensor(STUDENT)
    s[0, :, 1, 0] = 100.0
    assert channel_wise_kd(s, torch.tensor(TEACHER), t, mask=mask).item() == pytest.approx(
        hand, rel=1e-6
    )


def test_cwd_mask_of_an_empty_image_leaves_it_out() -> None:
    s, te = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2)
    mask = torch.ones(2, 2, 2, dtype=torch.bool)
    mask[1] = False
    got = channel_wise_kd(s, te, 2.0, mask=mask)
    assert got.item() == pytest.approx(channel_wise_kd(s[:1], te[:1], 2.0).item(), rel=1e-6)


def test_cwd_is_zero_for_identical_maps_and_positive_otherwise() -> None:
    s = torch.tensor(STUDENT)
    assert channel_wise_kd(s, s.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-7)
    assert channel_wise_kd(s, torch.tensor(TEACHER), 4.0).item() > 0


def test_cwd_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        channel_wise_kd(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 4, 4), 1.0)
    with pytest.raises(ValueError, match="mask must be a bool"):
        channel_wise_kd(
            torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2), 1.0, mask=torch.ones(1, 2, 2)
        )
