"""Feature distillation pieces: attention maps, attention transfer, the 1x1 adapter, MSE."""

from __future__ import annotations

import math

import pytest
import torch

from distillery.losses import FeatureAdapter, attention_map, attention_transfer, feature_mse

STUDENT = [[[[1.0, -0.5], [2.0, 0.3]], [[0.2, 0.7], [-1.0, 1.5]]]]  # (1, 2, 2, 2)
TEACHER = [
    [
        [[0.4, 1.2], [-0.3, 2.5]],
        [[1.1, -0.9], [0.6, 0.0]],
        [
            [
                0.5,
                0.5,
            ],
            [1.0, -2.0],
        ],
    ]
]


def _attention(f: list) -> list[float]:
    """normalise(mean_c f^2) of one image, positions row-major."""
    c, h, w = len(f), len(f[0]), len(f[0][0])
    a = [sum(f[k][i][j] ** 2 for k in range(c)) / c for i in range(h) for j in range(w)]
    norm = math.sqrt(sum(v * v for v in a))
    return [v / norm for v in a]


def test_attention_map_matches_hand() -> None:
    got = attention_map(torch.tensor(STUDENT))
    assert got.shape == (1, 4)
    assert got[0].tolist() == pytest.approx(_attention(STUDENT[0]), rel=1e-6)


def test_attention_transfer_matches_hand() -> None:
    a_s, a_t = _attention(STUDENT[0]), _attention(TEACHER[0])  # channels differ: 2 vs 3
    hand = sum((x - y) ** 2 for x, y in zip(a_s, a_t, strict=True)) / 4  # mean over N*H*W
    got = attention_transfer(torch.tensor(STUDENT), torch.tensor(TEACHER))
    assert got.item() == pytest.approx(hand, rel=1e-6)


def test_attention_transfer_resizes_the_student_map_to_the_teachers_size() -> None:
    student = torch.full((1, 3, 2, 2), 2.0)  # uniform attention stays uniform when upsampled
    teacher = torch.arange(16.0).view(1, 1, 4, 4) / 10
    a_t = _attention(teacher[0].tolist())
    hand = sum((0.25 - y) ** 2 for y in a_t) / 16  # uniform unit vector over 16 positions
    assert attention_transfer(student, teacher).item() == pytest.approx(hand, rel=1e-6)


def test_attention_transfer_is_zero_for_proportional_features() -> None:
    f = torch.tensor(STUDENT)
    assert attention_transfer(3 * f, f).item() == pytest.approx(0.0, abs=1e-9)


def test_feature_mse_matches_hand_and_checks_shapes() -> None:
    s, t = torch.tensor(STUDENT), torch.tensor(TEACHER)[:, :2]
    flat_s = [v for c in STUDENT[0] for row in c for v in row]
    flat_t = [v for c in TEACHER[0][:2] for row in c for v in row]
    hand = sum((a - b) ** 2 for a, b in zip(flat_s, flat_t, strict=True)) / 8
    assert feature_mse(s, t).item() == pytest.approx(hand, rel=1e-6)
    with pytest.raises(ValueError, match="adapt the student's first"):
        feature_mse(s, torch.tensor(TEACHER))


def test_adapter_maps_channels_and_resizes() -> None:
    adapter = FeatureAdapter(2, 3)
    with torch.no_grad():
        adapter.proj.weight.zero_()
        adapter.proj.bias.copy_(torch.tensor([0.0, 1.0, 2.0]))
        adapter.proj.weight[0, 0] = 1.0  # out channel 0 = in channel 0
    out = adapter(torch.tensor(STUDENT), (2, 2))
    assert out.shape == (1, 3, 2, 2)
    assert torch.equal(out[0, 0], torch.tensor(STUDENT[0][0]))
    assert torch.all(out[0, 2] == 2.0)
    up = adapter(torch.tensor(STUDENT), (4, 4))
    assert up.shape == (1, 3, 4, 4)
    assert torch.all(up[0, 1] == 1.0)  # constant channels stay constant under bilinear resize
    with pytest.raises(ValueError, match=r"expects \(N, 2, H, W\)"):
        adapter(torch.zeros(1, 3, 2, 2), (2, 2))
