"""Statistics over seeds, in plain Python (no numpy, scipy or torch).

Method for every 95% interval here: the Student t-interval on paired per-seed differences.
For a configuration trained with seeds s = 1..n and the student baseline trained with the same
seeds, ``d_s = mIoU_config(s) - mIoU_baseline(s)``;
``CI = mean(d) ± t_{0.975, n-1} * sd(d) / sqrt(n)`` with ``sd`` the sample standard deviation
(n - 1 in the denominator). Pairing by seed removes the seed-to-seed variation the two share
(same data order and augmentation). With one seed there is no interval (None).

``t_{0.975, df}`` is tabulated for df <= 30 (6 decimals) and computed beyond that with the
Cornish–Fisher expansion of the t quantile in 1/df (error < 1e-5 for df > 30).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

#: t_{0.975, df} for df = 1..30.
T975 = (
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157,
    2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922,
    2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831,
    2.048407, 2.045230, 2.042272,
)  # fmt: skip
#: The standard normal's 0.975 quantile.
Z975 = 1.959963984540054

CI_METHOD = (
    "95% CI: Student t-interval on the per-seed paired differences (same seed, config minus "
    "baseline): mean ± t(0.975, n−1)·sd/√n"
)


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (df >= 1)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z, v = Z975, float(df)
    return (
        z
        + (z**3 + z) / (4 * v)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
        + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * v**4)
    )


def mean(xs: Sequence[float]) -> float:
    if not xs:
        raise ValueError("the mean of no values")
    return sum(xs) / len(xs)


def sample_std(xs: Sequence[float]) -> float | None:
    """sqrt(sum (x - mean)^2 / (n - 1)); None for fewer than two values."""
    if len(xs) < 2:
        return None
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


@dataclass(frozen=True)
class Interval:
    """Mean of paired differences with its 95% t-interval (None with fewer than two pairs)."""

    n: int
    mean: float
    std: float | None
    low: float | None
    high: float | None

    @property
    def excludes_zero(self) -> bool:
        """True when the interval lies wholly above or below 0 (the seeds tell the two apart)."""
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)

    def as_list(self) -> list[float] | None:
        return None if self.low is None or self.high is None else [self.low, self.high]


def t_interval(diffs: Sequence[float]) -> Interval:
    """The 95% Student t-interval of the mean of `diffs` (see the module docstring)."""
    n = len(diffs)
    m = mean(diffs)
    sd = sample_std(diffs)
    if sd is None:
        return Interval(n, m, None, None, None)
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return Interval(n, m, sd, m - half, m + half)


def paired_differences(a: Mapping[int, float], b: Mapping[int, float]) -> dict[int, float]:
    """``a[s] - b[s]`` for every seed s present in both (sorted by seed)."""
    return {s: a[s] - b[s] for s in sorted(set(a) & set(b))}


def paired_interval(a: Mapping[int, float], b: Mapping[int, float]) -> Interval | None:
    """The t-interval of ``a - b`` paired by seed; None when no seed is in both."""
    diffs = paired_differences(a, b)
    return t_interval(list(diffs.values())) if diffs else None


def gap_closed(miou: float, baseline: float, teacher: float | None) -> float | None:
    """(mIoU - baseline) / (teacher - baseline); None without a teacher or with no gap."""
    if teacher is None or abs(teacher - baseline) < 1e-12:
        return None
    return (miou - baseline) / (teacher - baseline)


@dataclass(frozen=True)
class MeanStd:
    mean: float | None
    std: float | None
    n: int


def mean_std(values: Iterable[float | None]) -> MeanStd:
    """Mean and sample std of the values that are not None (a class absent in some seeds)."""
    xs = [v for v in values if v is not None]
    if not xs:
        return MeanStd(None, None, 0)
    return MeanStd(mean(xs), sample_std(xs), len(xs))


def per_class_mean_std(
    per_seed: Sequence[Mapping[str, float | None]],
) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """Per-class IoU mean and std over seeds (each seed: class name -> IoU or None), in the
    class order of the first seed."""
    names = list(dict.fromkeys(name for iou in per_seed for name in iou))
    stats = {name: mean_std(iou.get(name) for iou in per_seed) for name in names}
    return {n: s.mean for n, s in stats.items()}, {n: s.std for n, s in stats.items()}
