"""How a teacher's outputs look: mean entropy and expected calibration error (ECE), per pixel.

For softmax probabilities p over C classes at each labelled pixel i:

- entropy ``H_i = -sum_c p_{i,c} log p_{i,c}`` (nats); reported as the mean over pixels and as
  the fraction of the maximum, ``mean H / log C``;
- ECE with B = 15 equal-width confidence bins: the confidence ``conf_i = max_c p_{i,c}`` falls in
  bin b when ``(b-1)/B < conf_i <= b/B``; ``ECE = sum_b (n_b / n) |acc_b - conf_b|`` with
  ``acc_b`` the fraction of bin b's pixels whose argmax is the label and ``conf_b`` their mean
  confidence (Guo et al. 2017).

Pure numpy: pass probabilities as arrays (N, C, ...) (e.g. ``softmax(logits).numpy()``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The label of unlabelled pixels (as in `distillery.data.labels`, which this avoids importing).
IGNORE_INDEX = 255

ECE_BINS = 15


@dataclass(frozen=True)
class Calibration:
    pixels: int
    mean_entropy: float
    #: mean entropy / log C, in 0..1.
    normalized_entropy: float
    ece: float
    accuracy: float
    mean_confidence: float
    #: Per bin: [count, accuracy or None, mean confidence or None] (for reliability diagrams).
    bins: list[list[Any]]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class CalibrationAccumulator:
    """Sums entropy and per-bin confidence/accuracy over batches."""

    def __init__(self, num_classes: int, bins: int = ECE_BINS, ignore_index: int = IGNORE_INDEX):
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        self.num_classes, self.num_bins, self.ignore_index = num_classes, bins, ignore_index
        self.entropy = 0.0
        self.count = np.zeros(bins, dtype=np.int64)
        self.correct = np.zeros(bins, dtype=np.float64)
        self.confidence = np.zeros(bins, dtype=np.float64)

    def update(self, probs: np.ndarray, target: np.ndarray) -> None:
        probs, target = np.asarray(probs, dtype=np.float64), np.asarray(target)
        if probs.ndim < 2 or probs.shape[1] != self.num_classes:
            raise ValueError(
                f"probabilities must be (N, {self.num_classes}, ...), got {probs.shape}"
            )
        if probs.shape[:1] + probs.shape[2:] != target.shape:
            raise ValueError(f"target {target.shape} does not match probabilities {probs.shape}")
        p = np.moveaxis(probs, 1, -1).reshape(-1, self.num_classes)
        t = target.reshape(-1)
        keep = t != self.ignore_index
        p, t = p[keep], t[keep]
        if p.size == 0:
            return
        with np.errstate(divide="ignore", invalid="ignore"):
            plogp = np.where(p > 0, p * np.log(p), 0.0)
        self.entropy += float(-plogp.sum())
        conf = p.max(1)
        right = (p.argmax(1) == t).astype(np.float64)
        b = np.clip(np.ceil(conf * self.num_bins).astype(np.int64) - 1, 0, self.num_bins - 1)
        self.count += np.bincount(b, minlength=self.num_bins)
        self.correct += np.bincount(b, weights=right, minlength=self.num_bins)
        self.confidence += np.bincount(b, weights=conf, minlength=self.num_bins)

    def compute(self) -> Calibration:
        n = int(self.count.sum())
        if n == 0:
            raise ValueError("no labelled pixel was seen")
        ece = 0.0
        bins: list[list[Any]] = []
        for k in range(self.num_bins):
            nk = int(self.count[k])
            if nk == 0:
                bins.append([0, None, None])
                continue
            acc, conf = self.correct[k] / nk, self.confidence[k] / nk
            ece += nk / n * abs(acc - conf)
            bins.append([nk, float(acc), float(conf)])
        mean_h = self.entropy / n
        return Calibration(
            pixels=n,
            mean_entropy=mean_h,
            normalized_entropy=mean_h / math.log(self.num_classes) if self.num_classes > 1 else 0.0,
            ece=float(ece),
            accuracy=float(self.correct.sum() / n),
            mean_confidence=float(self.confidence.sum() / n),
            bins=bins,
        )


def calibration(
    probs: np.ndarray, target: np.ndarray, bins: int = ECE_BINS, ignore_index: int = IGNORE_INDEX
) -> Calibration:
    """Entropy and ECE of one array of probabilities (N, C, ...) against `target` (N, ...)."""
    acc = CalibrationAccumulator(np.asarray(probs).shape[1], bins, ignore_index)
    acc.update(probs, target)
    return acc.compute()
