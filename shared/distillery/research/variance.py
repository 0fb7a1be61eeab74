"""Bias and variance of the 0-1 loss over seeds (Domingos, ICML 2000), per pixel.

For a pixel x with label t and the predictions y_1..y_S of S students trained with different
seeds:

- main prediction ``y_m(x)`` = the seeds' majority vote (a tie goes to the lowest class index);
- ``bias(x) = 1[y_m != t]``;
- ``variance(x) = (1/S) sum_s 1[y_s != y_m]`` (how often a seed disagrees with the vote);
- ``loss(x) = (1/S) sum_s 1[y_s != t]``.

Averaged over the labelled pixels (overall and per true class): ``bias``, ``variance``, the
``unbiased_variance`` (variance at pixels with bias 0, which adds to the loss), the
``biased_variance`` (at pixels with bias 1, where disagreeing with a wrong vote can only help),
``loss``, and ``net_variance = loss - bias`` (Domingos: ``loss = bias + V_u - sum_biased c V``,
c = the fraction of the disagreeing seeds that are right), so ``loss = bias + net_variance``
exactly. Labels need no noise term (one label per pixel). Pure numpy; no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The label of unlabelled pixels (as in `distillery.data.labels`, which this avoids importing).
IGNORE_INDEX = 255

FIELDS = ("loss", "bias", "variance", "unbiased_variance", "biased_variance", "net_variance")


@dataclass(frozen=True)
class BiasVariance:
    """Means over labelled pixels; ``per_class[name][field]`` over the pixels of that class
    (None for a class with no labelled pixel)."""

    pixels: int
    loss: float
    bias: float
    variance: float
    unbiased_variance: float
    biased_variance: float
    net_variance: float
    per_class: dict[str, dict[str, float | None]]

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pixels": self.pixels}
        out.update({f: getattr(self, f) for f in FIELDS})
        out["per_class"] = self.per_class
        return out


class BiasVarianceAccumulator:
    """Sums the per-pixel terms over batches: ``update(predictions, target)`` with
    `predictions` (S, ...) class indices of the S seeds and `target` (...) labels."""

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        self.num_classes = num_classes
        self.class_names = list(class_names or (f"class_{i}" for i in range(num_classes)))
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")
        self.ignore_index = ignore_index
        #: sums[k, c]: field k (loss, bias, variance, unbiased, biased) summed over class c pixels.
        self.sums = np.zeros((5, num_classes), dtype=np.float64)
        self.counts = np.zeros(num_classes, dtype=np.int64)
        self.num_seeds: int | None = None

    def update(self, predictions: np.ndarray, target: np.ndarray) -> None:
        predictions, target = np.asarray(predictions), np.asarray(target)
        if predictions.ndim < 1 or predictions.shape[1:] != target.shape:
            raise ValueError(
                f"predictions must be (seeds, *target.shape) = (S, *{target.shape}), "
                f"got {predictions.shape}"
            )
        s = predictions.shape[0]
        if s < 2:
            raise ValueError(f"bias and variance need predictions of at least 2 seeds, got {s}")
        if self.num_seeds is not None and s != self.num_seeds:
            raise ValueError(f"{s} seeds in this batch, {self.num_seeds} before")
        self.num_seeds = s
        keep = target.reshape(-1) != self.ignore_index
        t = target.reshape(-1)[keep].astype(np.int64)
        preds = predictions.reshape(s, -1)[:, keep].astype(np.int64)
        c = self.num_classes
        if t.size and (t.min() < 0 or t.max() >= c):
            raise ValueError(
                f"target holds labels outside [0, {c}) that are not {self.ignore_index}"
            )
        if preds.size and (preds.min() < 0 or preds.max() >= c):
            raise ValueError(f"predictions hold classes outside [0, {c})")
        votes = np.zeros((c, t.size), dtype=np.int64)
        cols = np.arange(t.size)
        for row in preds:
            np.add.at(votes, (row, cols), 1)
        main = votes.argmax(0)  # the lowest index among tied classes
        bias = (main != t).astype(np.float64)
        variance = (preds != main).mean(0)
        loss = (preds != t).mean(0)
        terms = (loss, bias, variance, variance * (1 - bias), variance * bias)
        for k, values in enumerate(terms):
            self.sums[k] += np.bincount(t, weights=values, minlength=c)
        self.counts += np.bincount(t, minlength=c)

    def compute(self) -> BiasVariance:
        total = int(self.counts.sum())
        if total == 0:
            raise ValueError("no labelled pixel was seen")
        overall = self.sums.sum(1) / total
        per_class: dict[str, dict[str, float | None]] = {}
        for i, name in enumerate(self.class_names):
            n = int(self.counts[i])
            if n == 0:
                per_class[name] = dict.fromkeys(FIELDS)
                continue
            v = self.sums[:, i] / n
            per_class[name] = _fields(v)
        return BiasVariance(total, per_class=per_class, **_fields(overall))  # type: ignore[arg-type]


def _fields(v: np.ndarray) -> dict[str, float]:
    loss, bias, variance, unbiased, biased = (float(x) for x in v)
    return {
        "loss": loss,
        "bias": bias,
        "variance": variance,
        "unbiased_variance": unbiased,
        "biased_variance": biased,
        "net_variance": loss - bias,
    }


def bias_variance(
    predictions: np.ndarray,
    target: np.ndarray,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> BiasVariance:
    """The decomposition for one array of predictions (S, ...) against `target` (...)."""
    acc = BiasVarianceAccumulator(num_classes, class_names, ignore_index)
    acc.update(predictions, target)
    return acc.compute()
