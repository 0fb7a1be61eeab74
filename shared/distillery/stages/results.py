"""The comparison table of an experiment: teacher, student baseline and distilled student.

`gap_closed` = (mIoU_distilled - mIoU_baseline) / (mIoU_teacher - mIoU_baseline): the fraction of
the teacher-student gap that distillation closed (published methods close ~35-75% on Cityscapes).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol


def table_rows() -> list[tuple[str, str]]:
    """(stage, label) of the kinds with a row in the table, in the registry's order."""
    from distillery.registry import STAGES

    kinds = [STAGES.get(name) for name in STAGES.in_order()]
    return [(k.name, k.table_label) for k in kinds if k.table_label]


class _StageLike(Protocol):
    name: str
    result: dict[str, Any] | None


def build_results(stages: Iterable[_StageLike]) -> dict[str, Any]:
    """JSON-able table from the stages' stored results (train stages and the profile stage)."""
    by_name = {s.name: (s.result or {}) for s in stages}
    profile = by_name.get("profile", {})
    size = by_name.get("size")
    rows = []
    for name, label in table_rows():
        if name not in by_name and name == "teacher":
            res = _reused_teacher(by_name.get("distill"))
            if res is None:
                continue
            label = "teacher (reused; scored by the distill stage)"
        elif name not in by_name:
            continue
        else:
            res = by_name[name]
        metrics = res.get("metrics", {})
        prof = profile.get("teacher" if name == "teacher" else "student") or {}
        rows.append(
            {
                "stage": name,
                "model": label,
                "miou": metrics.get("miou"),
                "pixel_accuracy": metrics.get("pixel_accuracy"),
                "params": res.get("params") or prof.get("params"),
                "gflops": _gflops(prof),
                "latency_ms": _latency_ms(prof),
                "latency_at": _latency_at(prof),
            }
        )
    miou = {r["stage"]: r["miou"] for r in rows}
    base = miou.get("student")
    for r in rows:
        r["gain_over_baseline"] = (
            r["miou"] - base if r["miou"] is not None and base is not None else None
        )
    gap = None
    if None not in (miou.get("teacher"), base, miou.get("distill")):
        denom = miou["teacher"] - base
        gap = (miou["distill"] - base) / denom if abs(denom) > 1e-9 else None
    out: dict[str, Any] = {"rows": rows, "gap_closed": gap}
    if size:
        out["student_width"] = size.get("width")
    if profile:
        budget = (profile.get("student") or {}).get("budget")
        if budget:
            out["budget"] = budget
    return out


def _reused_teacher(distill: dict[str, Any] | None) -> dict[str, Any] | None:
    """A teacher given as a checkpoint trains in no stage of this experiment; the distill stage
    scores it (``teacher_miou``), so the table keeps its row and the gap closed."""
    metrics = (distill or {}).get("metrics") or {}
    if metrics.get("teacher_miou") is None:
        return None
    return {
        "metrics": {
            "miou": metrics["teacher_miou"],
            "pixel_accuracy": metrics.get("teacher_pixel_accuracy"),
        }
    }


def _gflops(prof: dict[str, Any]) -> float | None:
    flops = prof.get("flops_per_image") or prof.get("flops")
    return flops / 1e9 if flops else None


def _best_row(prof: dict[str, Any]) -> dict[str, Any] | None:
    rows = [r for r in prof.get("rows") or [] if r.get("latency_ms")]
    ones = [r for r in rows if r.get("batch_size") == 1] or rows
    if not ones:
        return None
    return min(ones, key=lambda r: r["latency_ms"]["p50"])


def _latency_ms(prof: dict[str, Any]) -> float | None:
    row = _best_row(prof)
    return row["latency_ms"]["p50"] if row else None


def _latency_at(prof: dict[str, Any]) -> str | None:
    row = _best_row(prof)
    if not row:
        return None
    size = prof.get("input_size") or row.get("input_size")
    size_s = f"{size[0]}x{size[1]}" if size else "?"
    variant, precision = str(row.get("variant")), str(row.get("precision", "fp32"))
    if precision not in variant:
        variant = f"{variant}, {precision}"
    return f"{size_s}, batch {row.get('batch_size')}, {variant}"


def _fmt(v: Any, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def results_markdown(results: dict[str, Any]) -> str:
    """The comparison table as Markdown (also what `distillery run` prints)."""
    lines = [
        "| model | mIoU | gain over baseline | params (M) | GFLOPs | latency (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        gain = r["gain_over_baseline"]
        lines.append(
            f"| {r['model']} | {_fmt(r['miou'] and 100 * r['miou'], '.1f')} "
            f"| {'—' if gain is None or r['stage'] == 'student' else format(100 * gain, '+.1f')} "
            f"| {_fmt(r['params'] and r['params'] / 1e6, '.3f')} | {_fmt(r['gflops'], '.3f')} "
            f"| {_fmt(r['latency_ms'], '.2f')} |"
        )
    lines += ["", results_caption(results)]
    return "\n".join(lines) + "\n"


def results_caption(results: dict[str, Any]) -> str:
    """What the table's numbers mean: gap closed, where latency was measured, chosen width."""
    gap = results.get("gap_closed")
    text = (
        "mIoU in %, on the validation split. Gap closed by distillation: "
        + ("—" if gap is None else f"{100 * gap:.0f}%")
        + " of the teacher–baseline mIoU gap."
    )
    at = next((r["latency_at"] for r in results["rows"] if r.get("latency_at")), None)
    if at:
        text += f"\nLatency: median per batch at {at}."
    if results.get("student_width"):
        text += f"\nStudent width chosen for the latency budget: {results['student_width']}."
    return text
