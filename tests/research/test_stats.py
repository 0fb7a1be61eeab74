"""Seed statistics and the sweep table against hand computations."""

from __future__ import annotations

import math

import pytest

from distillery.research.stats import (
    mean_std,
    paired_interval,
    per_class_mean_std,
    sample_std,
    t_interval,
    t_quantile_975,
)
from distillery.research.summary import ConfigResult, SeedResult, sweep_markdown, sweep_summary


def test_t_quantiles_tabulated_and_computed() -> None:
    assert t_quantile_975(1) == pytest.approx(12.706205)
    assert t_quantile_975(2) == pytest.approx(4.302653)
    # beyond the table: published values of t(0.975, df)
    assert t_quantile_975(40) == pytest.approx(2.021075, abs=2e-6)
    assert t_quantile_975(60) == pytest.approx(2.000298, abs=2e-6)
    assert t_quantile_975(120) == pytest.approx(1.979930, abs=2e-6)
    assert t_quantile_975(10**6) == pytest.approx(1.959966, abs=2e-6)
    # continuous across the edge of the table
    assert t_quantile_975(30) > t_quantile_975(31) > t_quantile_975(32)
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile_975(0)


def test_t_interval_by_hand() -> None:
    # gains 0.05, 0.04, 0.06: mean 0.05, sd sqrt((0 + 1e-4 + 1e-4) / 2) = 0.01
    iv = t_interval([0.05, 0.04, 0.06])
    half = 4.302653 * 0.01 / math.sqrt(3)  # = 0.024841...
    assert (iv.n, iv.mean, iv.std) == (3, pytest.approx(0.05), pytest.approx(0.01))
    assert iv.low == pytest.approx(0.05 - half) and iv.high == pytest.approx(0.05 + half)
    assert iv.excludes_zero and iv.as_list() == [iv.low, iv.high]
    one = t_interval([0.3])
    assert (one.mean, one.std, one.low, one.as_list(), one.excludes_zero) == (
        0.3,
        None,
        None,
        None,
        False,
    )
    assert sample_std([1.0, 2.0, 3.0, 4.0]) == pytest.approx(math.sqrt(5 / 3))


def test_pairing_uses_common_seeds_only() -> None:
    iv = paired_interval({0: 0.5, 1: 0.6, 7: 0.9}, {0: 0.4, 1: 0.4, 2: 0.1})
    assert iv is not None and iv.n == 2 and iv.mean == pytest.approx(0.15)
    assert paired_interval({0: 0.5}, {1: 0.4}) is None


def test_mean_std_skips_absent_classes() -> None:
    s = mean_std([None, 0.5, 0.3])
    assert (s.mean, s.std, s.n) == (pytest.approx(0.4), pytest.approx(math.sqrt(0.02)), 2)
    means, stds = per_class_mean_std(
        [{"road": 0.9, "car": None}, {"road": 0.8, "car": 0.5}, {"road": 0.7, "car": 0.3}]
    )
    assert list(means) == ["road", "car"]
    assert means["road"] == pytest.approx(0.8) and stds["road"] == pytest.approx(0.1)
    assert means["car"] == pytest.approx(0.4) and stds["car"] == pytest.approx(math.sqrt(0.02))


def _seeds(mious: list[float], ious: list[dict] | None = None) -> list[SeedResult]:
    ious = ious or [{} for _ in mious]
    return [
        SeedResult(s, m, i, wall_time_s=10.0 * (s + 1))
        for s, (m, i) in enumerate(zip(mious, ious, strict=True))
    ]


BASELINE = _seeds([0.20, 0.22, 0.18])
A = ConfigResult(
    "A",
    {"distillation.losses.1.temperature": 4},
    _seeds(
        [0.25, 0.26, 0.24],
        [{"road": 0.9, "car": None}, {"road": 0.8, "car": 0.5}, {"road": 0.7, "car": 0.3}],
    ),
)
B = ConfigResult("B", {}, _seeds([0.21, 0.22, 0.20]))
C = ConfigResult("C", {}, _seeds([0.26, 0.25, 0.24]), failed={3: "stage distill failed: boom"})


def test_sweep_summary_by_hand() -> None:
    out = sweep_summary([A, B, C], BASELINE, teacher_miou=0.30)
    assert out["kind"] == "sweep" and out["teacher_miou"] == 0.30
    base = out["baseline"]
    assert base["miou_mean"] == pytest.approx(0.20) and base["miou_std"] == pytest.approx(0.02)
    assert [r["seed"] for r in base["per_seed"]] == [0, 1, 2]
    a, b, c = out["configurations"]
    # A: gains 0.05, 0.04, 0.06 (mean 0.05, sd 0.01); gaps 0.05/0.10 = 0.04/0.08 = 0.06/0.12 = 0.5
    half = 4.302653 * 0.01 / math.sqrt(3)
    assert a["name"] == "A" and a["overrides"] == {"distillation.losses.1.temperature": 4}
    assert [(r["seed"], r["gain"]) for r in a["per_seed"]] == [
        (0, pytest.approx(0.05)),
        (1, pytest.approx(0.04)),
        (2, pytest.approx(0.06)),
    ]
    assert a["per_seed"][0]["miou"] == 0.25 and a["per_seed"][2]["wall_time_s"] == 30.0
    assert a["gain_mean"] == pytest.approx(0.05) and a["gain_std"] == pytest.approx(0.01)
    assert a["gain_ci95"] == [pytest.approx(0.05 - half), pytest.approx(0.05 + half)]
    assert a["gap_closed_mean"] == pytest.approx(0.5) and a["gap_closed_std"] == pytest.approx(0)
    assert a["miou_mean"] == pytest.approx(0.25) and a["miou_std"] == pytest.approx(0.01)
    assert a["iou_mean"]["road"] == pytest.approx(0.8) and a["iou_std"]["car"] == pytest.approx(
        math.sqrt(0.02)
    )
    assert a["wall_time_s_mean"] == pytest.approx(20.0) and a["teacher_miou"] == 0.30
    assert a["distinguishable_from_baseline"]
    # B: gains 0.01, 0.00, 0.02 -> CI 0.01 ± 0.0248 contains 0; gaps 0.1, 0, 1/6
    assert b["gain_mean"] == pytest.approx(0.01)
    assert b["gain_ci95"][0] == pytest.approx(0.01 - half)
    assert b["gain_ci95"][0] < 0 < b["gain_ci95"][1]
    assert not b["distinguishable_from_baseline"]
    assert b["gap_closed_mean"] == pytest.approx((0.1 + 0 + 1 / 6) / 3)
    # C: gains 0.06, 0.03, 0.06; A - C = -0.01, 0.01, 0 (mean 0): the seeds cannot tell A from C;
    # A - B = 0.04 every seed (sd 0): they can
    sd_c = math.sqrt((0.01**2 + 0.02**2 + 0.01**2) / 2)
    assert c["gain_std"] == pytest.approx(sd_c)
    assert c["gain_ci95"][1] - c["gain_mean"] == pytest.approx(4.302653 * sd_c / math.sqrt(3))
    assert a["indistinguishable_from"] == ["C"] and c["indistinguishable_from"] == ["A"]
    assert b["indistinguishable_from"] == []
    assert c["failed"] == [{"seed": 3, "error": "stage distill failed: boom"}]
    assert out["best"] == "A" and "t-interval" in out["ci_method"]
    md = sweep_markdown(out)
    assert "| A | 3 | 25.0 ± 1.0 | +5.0 | [+2.5, +7.5] | 50% | B | 20 |" in md
    assert (
        "| B ⚠ |" in md
        and "(1 failed)" in md
        and "Best mean gain: A (the seeds cannot tell it from C)." in md
    )


def test_sweep_summary_without_teacher_or_pairs() -> None:
    lonely = ConfigResult("X", {}, [SeedResult(5, 0.3)], teacher_miou=None)
    out = sweep_summary([lonely], BASELINE, teacher_miou=None)
    (x,) = out["configurations"]
    assert x["per_seed"] == [
        {"seed": 5, "miou": 0.3, "gain": None, "gap_closed": None, "wall_time_s": None}
    ]
    assert x["gain_mean"] is None and x["gain_ci95"] is None and x["gap_closed_mean"] is None
    assert out["best"] is None and not x["distinguishable_from_baseline"]
    # a configuration that changes the student is compared with its own baseline
    wide = ConfigResult("w8", {}, _seeds([0.30, 0.31, 0.29]), baseline=_seeds([0.26, 0.28, 0.27]))
    (w,) = sweep_summary([wide], BASELINE, teacher_miou=0.30)["configurations"]
    assert [r["gain"] for r in w["per_seed"]] == [
        pytest.approx(0.04),
        pytest.approx(0.03),
        pytest.approx(0.02),
    ]
    assert w["own_baseline"][0] == {"seed": 0, "miou": 0.26}
    assert w["per_seed"][0]["gap_closed"] == pytest.approx(0.04 / 0.04)
    # a configuration's own teacher (e.g. a label-smoothed one) is used for its gap
    own = ConfigResult("ls", {}, _seeds([0.25, 0.26, 0.24]), teacher_miou=0.40)
    (ls,) = sweep_summary([own], BASELINE, teacher_miou=0.30)["configurations"]
    assert ls["teacher_miou"] == 0.40
    assert ls["per_seed"][0]["gap_closed"] == pytest.approx(0.05 / 0.20)
