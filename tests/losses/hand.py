"""Plain-python math for hand computations in the loss tests (no torch)."""

from __future__ import annotations

import math


def softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    s = sum(e)
    return [v / s for v in e]


def pixel(logits: list, n: int, h: int, w: int) -> list[float]:
    """The C logits of pixel (h, w) of image n of a nested (N, C, H, W) list."""
    return [logits[n][c][h][w] for c in range(len(logits[n]))]


def pixels(logits: list):
    """(n, h, w, class-logits) for every pixel of a nested (N, C, H, W) list."""
    for n, image in enumerate(logits):
        for h in range(len(image[0])):
            for w in range(len(image[0][0])):
                yield n, h, w, pixel(logits, n, h, w)


def kl(p: list[float], q: list[float]) -> float:
    """KL(p || q) = sum_k p_k (log p_k - log q_k)."""
    return sum(pk * (math.log(pk) - math.log(qk)) for pk, qk in zip(p, q, strict=True))


def pearson(u: list[float], v: list[float], eps: float = 1e-8) -> float:
    """Pearson correlation <u - mean u, v - mean v> / (|u - mean u| |v - mean v| + eps)."""
    mu, mv = sum(u) / len(u), sum(v) / len(v)
    du, dv = [x - mu for x in u], [x - mv for x in v]
    num = sum(a * b for a, b in zip(du, dv, strict=True))
    return num / (math.sqrt(sum(a * a for a in du)) * math.sqrt(sum(b * b for b in dv)) + eps)
