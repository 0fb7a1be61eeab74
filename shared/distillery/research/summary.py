"""The comparison table of a sweep: every configuration against the student baseline, by seed.

`sweep_summary` turns per-seed child results into the `results.json` of a sweep (see
`distillery.research.stats` for the method of every interval):

- ``teacher_miou``: the (base) teacher's mIoU, also when it was reused rather than trained;
- ``baseline``: the student trained alone, per seed, with mean ± std;
- ``configurations``: for each child, ``name``, ``overrides``, ``per_seed`` ``[{seed, miou,
  gain, gap_closed, wall_time_s}]``, ``miou_mean``/``miou_std``, per-class ``iou_mean``/``iou_std``,
  ``gain_mean``, ``gain_std``, ``gain_ci95`` ``[low, high]``, ``gap_closed_mean``,
  ``distinguishable_from_baseline`` (the CI excludes 0), ``own_baseline`` (per seed, when the
  configuration changes the student and so has its own baseline), ``indistinguishable_from``
  (the other configurations whose paired difference CI contains 0: the seeds cannot tell them
  apart),
  ``failed`` seeds with their errors. mIoU, IoU and gains are fractions 0..1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from distillery.research.stats import (
    CI_METHOD,
    Interval,
    gap_closed,
    mean_std,
    paired_interval,
    per_class_mean_std,
)


@dataclass(frozen=True)
class SeedResult:
    """One trained student: its seed, validation mIoU and per-class IoU (0..1)."""

    seed: int
    miou: float
    iou: Mapping[str, float | None] = field(default_factory=dict)
    wall_time_s: float | None = None


@dataclass(frozen=True)
class ConfigResult:
    """One configuration of a sweep: its students by seed, its teacher's mIoU, its failures."""

    name: str
    overrides: Mapping[str, Any]
    seeds: Sequence[SeedResult]
    teacher_miou: float | None = None
    failed: Mapping[int, str] = field(default_factory=dict)
    #: Extra facts carried to the table as they are (teacher entropy/ECE, student latency...).
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: Its own student baseline when it changes the student (`student.*` overrides); None: the
    #: sweep's baseline.
    baseline: Sequence[SeedResult] | None = None


def _by_seed(results: Sequence[SeedResult]) -> dict[int, float]:
    return {r.seed: r.miou for r in results}


def _cannot_tell(interval: Interval | None) -> bool:
    return interval is None or not interval.excludes_zero


def _block(results: Sequence[SeedResult]) -> dict[str, Any]:
    miou = mean_std(r.miou for r in results)
    iou_mean, iou_std = per_class_mean_std([r.iou for r in results])
    walls = mean_std(r.wall_time_s for r in results)
    return {
        "miou_mean": miou.mean,
        "miou_std": miou.std,
        "iou_mean": iou_mean,
        "iou_std": iou_std,
        "wall_time_s_mean": walls.mean,
    }


def sweep_summary(
    configurations: Sequence[ConfigResult],
    baseline: Sequence[SeedResult],
    teacher_miou: float | None,
) -> dict[str, Any]:
    """The sweep's results table (JSON-able; the module docstring lists its fields)."""
    common = _by_seed(baseline)
    rows: list[dict[str, Any]] = []
    for config in configurations:
        base = common if config.baseline is None else _by_seed(config.baseline)
        teacher = config.teacher_miou if config.teacher_miou is not None else teacher_miou
        per_seed = []
        gaps = []
        for r in sorted(config.seeds, key=lambda r: r.seed):
            gain = r.miou - base[r.seed] if r.seed in base else None
            gap = gap_closed(r.miou, base[r.seed], teacher) if r.seed in base else None
            if gap is not None:
                gaps.append(gap)
            per_seed.append(
                {
                    "seed": r.seed,
                    "miou": r.miou,
                    "gain": gain,
                    "gap_closed": gap,
                    "wall_time_s": r.wall_time_s,
                }
            )
        interval = paired_interval(_by_seed(config.seeds), base)
        gap_stats = mean_std(gaps)
        rows.append(
            {
                "name": config.name,
                "overrides": dict(config.overrides),
                "teacher_miou": teacher,
                "per_seed": per_seed,
                **_block(config.seeds),
                "gain_mean": interval.mean if interval else None,
                "gain_std": interval.std if interval else None,
                "gain_ci95": interval.as_list() if interval else None,
                "gap_closed_mean": gap_stats.mean,
                "gap_closed_std": gap_stats.std,
                "distinguishable_from_baseline": not _cannot_tell(interval),
                "failed": [{"seed": s, "error": e} for s, e in sorted(config.failed.items())],
                "own_baseline": None
                if config.baseline is None
                else [{"seed": r.seed, "miou": r.miou} for r in sorted(config.baseline, key=_seed)],
                **dict(config.extra),
            }
        )
    by_name = {c.name: _by_seed(c.seeds) for c in configurations}
    for row in rows:
        row["indistinguishable_from"] = [
            other["name"]
            for other in rows
            if other is not row
            and _cannot_tell(paired_interval(by_name[row["name"]], by_name[other["name"]]))
        ]
    ranked = [r for r in rows if r["gain_mean"] is not None]
    best = max(ranked, key=lambda r: r["gain_mean"])["name"] if ranked else None
    return {
        "kind": "sweep",
        "teacher_miou": teacher_miou,
        "baseline": {
            "per_seed": [{"seed": r.seed, "miou": r.miou} for r in sorted(baseline, key=_seed)],
            **_block(baseline),
        },
        "configurations": rows,
        "best": best,
        "ci_method": CI_METHOD,
    }


def _seed(r: SeedResult) -> int:
    return r.seed


def _pct(v: float | None, spec: str = ".1f") -> str:
    """100 * v formatted with `spec` (a trailing % is printed after the number), or —."""
    if v is None:
        return "—"
    pct = spec.endswith("%")
    text = format(100 * v, spec[:-1] if pct else spec)
    if text.lstrip("+-").strip("0.") == "":  # -0.0 and +0.0 read as 0.0
        text = text.lstrip("+-")
        text = ("+" if "+" in spec else "") + text
    return text + "%" if pct else text


def _secs(v: float | None) -> str:
    return "—" if v is None else f"{v:.0f}"


def sweep_markdown(results: Mapping[str, Any]) -> str:
    """The sweep's comparison table as Markdown (mIoU and gains in points of %)."""
    base = results["baseline"]
    lines = [
        "| configuration | seeds | mIoU (mean ± std) | gain | 95% CI of gain | gap closed | "
        "seeds tell apart from | train s/seed |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
        f"| teacher | — | {_pct(results.get('teacher_miou'))} | | | | | |",
        f"| student baseline | {len(base['per_seed'])} | {_pct(base['miou_mean'])} ± "
        f"{_pct(base['miou_std'])} | | | | | {_secs(base.get('wall_time_s_mean'))} |",
    ]
    names = [c["name"] for c in results["configurations"]]
    for c in results["configurations"]:
        ci = c["gain_ci95"]
        ci_s = "—" if ci is None else f"[{_pct(ci[0], '+.1f')}, {_pct(ci[1], '+.1f')}]"
        apart = [n for n in names if n != c["name"] and n not in c["indistinguishable_from"]]
        flag = "" if c["distinguishable_from_baseline"] else " ⚠"
        failed = f" ({len(c['failed'])} failed)" if c["failed"] else ""
        lines.append(
            f"| {c['name']}{flag} | {len(c['per_seed'])}{failed} | {_pct(c['miou_mean'])} ± "
            f"{_pct(c['miou_std'])} | {_pct(c['gain_mean'], '+.1f')} | {ci_s} | "
            f"{_pct(c['gap_closed_mean'], '.0f%')} | {', '.join(apart) or 'none'} | "
            f"{_secs(c.get('wall_time_s_mean'))} |"
        )
    lines += [
        "",
        "mIoU in %. ⚠: the seeds cannot tell this configuration from the baseline (the CI "
        "contains 0). " + results.get("ci_method", CI_METHOD) + ".",
    ]
    matched = [c for c in results["configurations"] if c.get("compute_matched")]
    if matched:
        lines.append("At equal compute (a student-alone baseline trained as long as each child):")
        for c in matched:
            m = c["compute_matched"]
            ci = m["gain_ci95"]
            ci_s = "no CI" if ci is None else f"[{_pct(ci[0], '+.1f')}, {_pct(ci[1], '+.1f')}]"
            epochs = ", ".join(str(r["epochs"]) for r in m["per_seed"])
            lines.append(
                f"- {c['name']}: gain {_pct(m['gain_mean'], '+.1f')} {ci_s} (baseline epochs "
                f"{epochs})"
            )
    best = next((c for c in results["configurations"] if c["name"] == results.get("best")), None)
    if best is not None:
        ties = ([] if best["distinguishable_from_baseline"] else ["the baseline"]) + list(
            best["indistinguishable_from"]
        )
        caveat = f" (the seeds cannot tell it from {', '.join(ties)})" if ties else ""
        lines.append(f"Best mean gain: {best['name']}{caveat}.")
    return "\n".join(lines) + "\n"
