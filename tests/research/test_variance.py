"""Bias–variance of the 0-1 loss and calibration, on constructed cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distillery.research.calibration import CalibrationAccumulator, calibration
from distillery.research.variance import BiasVarianceAccumulator, bias_variance

# 3 seeds, 3 classes; pixel 7 is unlabelled (its wild predictions must not count).
TARGET = np.array([0, 0, 0, 1, 1, 1, 2, 255])
PREDS = np.array(
    [
        [0, 0, 1, 1, 0, 0, 0, 2],
        [0, 1, 1, 1, 0, 1, 0, 1],
        [0, 0, 1, 1, 0, 1, 2, 0],
    ]
)
# Per pixel: vote, bias, variance, loss
#  0: 0 0 0   0      1: 0 0 1/3 1/3    2: 1 1 0 1     3: 1 0 0 0
#  4: 0 1 0   1      5: 1 0 1/3 1/3    6: 0 1 1/3 2/3 (one seed right: variance lowers the loss)


def test_constructed_case_overall() -> None:
    bv = bias_variance(PREDS, TARGET, 3, ["a", "b", "c"])
    assert bv.pixels == 7
    assert bv.loss == pytest.approx(10 / 21)
    assert bv.bias == pytest.approx(3 / 7)
    assert bv.variance == pytest.approx(1 / 7)
    assert bv.unbiased_variance == pytest.approx(2 / 21)
    assert bv.biased_variance == pytest.approx(1 / 21)
    assert bv.net_variance == pytest.approx(1 / 21)
    assert bv.loss == pytest.approx(bv.bias + bv.net_variance)


def test_constructed_case_per_class() -> None:
    per = bias_variance(PREDS, TARGET, 3, ["a", "b", "c"]).per_class
    for name in ("a", "b"):
        assert per[name]["loss"] == pytest.approx(4 / 9)
        assert per[name]["bias"] == pytest.approx(1 / 3)
        assert per[name]["variance"] == pytest.approx(1 / 9)
        assert per[name]["biased_variance"] == pytest.approx(0)
    assert per["c"] == {
        "loss": pytest.approx(2 / 3),
        "bias": 1.0,
        "variance": pytest.approx(1 / 3),
        "unbiased_variance": 0.0,
        "biased_variance": pytest.approx(1 / 3),
        "net_variance": pytest.approx(-1 / 3),
    }


def test_batches_accumulate_like_one_array_and_absent_classes_are_none() -> None:
    acc = BiasVarianceAccumulator(4)
    acc.update(PREDS[:, :3], TARGET[:3])
    acc.update(PREDS[:, 3:], TARGET[3:])
    whole = bias_variance(PREDS, TARGET, 4)
    got = acc.compute()
    assert got.as_dict() == whole.as_dict()
    assert got.per_class["class_3"]["bias"] is None
    # identical seeds: no variance, loss = bias
    same = bias_variance(np.stack([PREDS[0]] * 4), TARGET, 3)
    assert same.variance == 0 and same.loss == pytest.approx(same.bias)


def test_ties_go_to_the_lowest_class_and_errors_are_named() -> None:
    bv = bias_variance(np.array([[2], [1]]), np.array([1]), 3)  # vote: 1 (tied with 2)
    assert (bv.bias, bv.variance, bv.loss) == (0.0, 0.5, 0.5)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        bias_variance(PREDS[:1], TARGET, 3)
    with pytest.raises(ValueError, match="predictions must be"):
        bias_variance(PREDS, TARGET[:3], 3)
    with pytest.raises(ValueError, match="outside"):
        bias_variance(PREDS, TARGET, 2)


# 2 classes, 5 labelled pixels and one unlabelled: (p(class 0), label)
PIXELS = [(0.9, 0), (0.7, 1), (0.95, 0), (0.5, 1), (0.92, 1), (0.99, 255)]


def _probs() -> tuple[np.ndarray, np.ndarray]:
    p0 = np.array([p for p, _ in PIXELS])
    probs = np.stack([p0, 1 - p0]).reshape(1, 2, 1, len(PIXELS))
    return probs, np.array([[[t for _, t in PIXELS]]])


def test_ece_and_entropy_by_hand() -> None:
    probs, target = _probs()
    cal = calibration(probs, target)
    # bins of width 1/15: 0.9 and 0.92 share bin 13 (acc 1/2, conf 0.91); 0.7 -> bin 10 (acc 0),
    # 0.95 -> bin 14 (acc 1), 0.5 -> bin 7 (argmax 0 != 1: acc 0)
    hand = (2 * abs(0.5 - 0.91) + abs(0 - 0.7) + abs(1 - 0.95) + abs(0 - 0.5)) / 5
    assert cal.ece == pytest.approx(hand) and cal.ece == pytest.approx(0.414)
    ent = [-(p * math.log(p) + (1 - p) * math.log(1 - p)) for p, t in PIXELS if t != 255]
    assert cal.mean_entropy == pytest.approx(sum(ent) / 5)
    assert cal.normalized_entropy == pytest.approx(sum(ent) / 5 / math.log(2))
    assert cal.pixels == 5 and cal.accuracy == pytest.approx(2 / 5)
    assert cal.mean_confidence == pytest.approx((0.9 + 0.7 + 0.95 + 0.5 + 0.92) / 5)
    assert cal.bins[13] == [2, 0.5, pytest.approx(0.91)] and cal.bins[0] == [0, None, None]


def test_calibration_edges() -> None:
    # a one-hot, correct prediction: entropy 0, ECE 0 (confidence 1 is in the last bin)
    probs = np.array([[[[1.0]], [[0.0]]]])
    cal = calibration(probs, np.array([[[0]]]))
    assert (cal.mean_entropy, cal.ece, cal.bins[14][0]) == (0.0, 0.0, 1)
    acc = CalibrationAccumulator(2)
    with pytest.raises(ValueError, match=r"\(N, 2, \.\.\.\)"):
        acc.update(np.zeros((1, 3, 1, 1)), np.zeros((1, 1, 1)))
    with pytest.raises(ValueError, match="no labelled pixel"):
        acc.compute()
