"""`distillery report RUN_DIR`: Markdown + PNG plots of a run folder's `results.json`.

For a sweep (``kind: sweep``): the comparison table (`sweep_markdown`), and the plots
``gains.png`` (mean gain with its 95% CI per configuration), ``pareto.png`` (mIoU vs student
latency, with the Pareto front: no other point is both faster and better), ``per_class_iou.png``
(baseline vs each configuration, every class so rare ones show), ``bias_variance.png`` (bias and
variance of the 0-1 loss over seeds) and ``teacher_vs_gain.png`` (each teacher's output entropy
and ECE against the gain of the students it taught). For one experiment: its table and per-class
bars. With the run's ``samples.png`` (teacher, baseline and best child on validation images),
it is copied in. matplotlib (Agg backend) draws; nothing here needs torch.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distillery.research.summary import sweep_markdown


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (cost, score) that no other point dominates (cost <= and score >=,
    one strictly), sorted by cost."""
    front = []
    for i, (c, s) in enumerate(points):
        dominated = any(
            (c2 <= c and s2 >= s) and (c2 < c or s2 > s)
            for j, (c2, s2) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def plot_gains(results: dict[str, Any], path: Path) -> Path | None:
    rows = [c for c in results["configurations"] if c["gain_mean"] is not None]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(rows) + 2), 3.5))
    means = [100 * c["gain_mean"] for c in rows]
    lows = [100 * (c["gain_mean"] - c["gain_ci95"][0]) if c["gain_ci95"] else 0 for c in rows]
    highs = [100 * (c["gain_ci95"][1] - c["gain_mean"]) if c["gain_ci95"] else 0 for c in rows]
    colors = ["tab:green" if c["distinguishable_from_baseline"] else "tab:gray" for c in rows]
    ax.bar(range(len(rows)), means, yerr=[lows, highs], capsize=4, color=colors)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(rows)), [c["name"] for c in rows], rotation=30, ha="right")
    ax.set_ylabel("gain over baseline (mIoU points)")
    ax.set_title("Mean gain, 95% t-interval paired by seed\n(grey: the CI contains 0)", fontsize=9)
    return _save(fig, path)


def plot_pareto(results: dict[str, Any], path: Path) -> Path | None:
    pts = [
        (c["latency_ms"], c["miou_mean"], c["name"])
        for c in results["configurations"]
        if c.get("latency_ms") is not None and c["miou_mean"] is not None
    ]
    base, base_latency = results["baseline"], results.get("baseline_latency_ms")
    if base.get("miou_mean") is not None and base_latency is not None:
        pts.append((base_latency, base["miou_mean"], "baseline"))
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    front = pareto_front([(p[0], p[1]) for p in pts])
    for i, (x, y, name) in enumerate(pts):
        ax.scatter(x, 100 * y, color="tab:red" if i in front else "tab:blue", zorder=3)
        ax.annotate(name, (x, 100 * y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.plot(
        [pts[i][0] for i in front], [100 * pts[i][1] for i in front], "r--", label="Pareto front"
    )
    if results.get("teacher_miou") is not None:
        ax.axhline(100 * results["teacher_miou"], color="gray", linestyle=":", label="teacher")
    ax.set_xlabel("student latency (ms, median, batch 1)")
    ax.set_ylabel("mIoU (%), mean over seeds")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_per_class(results: dict[str, Any], path: Path) -> Path | None:
    series = [("baseline", results["baseline"].get("iou_mean") or {})]
    series += [(c["name"], c.get("iou_mean") or {}) for c in results["configurations"]]
    return _per_class_bars(series, path)


def _per_class_bars(series: list[tuple[str, dict[str, Any]]], path: Path) -> Path | None:
    """Grouped bars: every class (so rare ones show), one bar per series (label, class -> IoU)."""
    names = list(dict.fromkeys(n for _, iou in series for n in iou))
    if not names:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names) + 2), 4))
    width = 0.8 / len(series)
    for k, (label, iou) in enumerate(series):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, [100 * (iou.get(n) or 0.0) for n in names], width, label=label)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("IoU (%), mean over seeds")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def plot_bias_variance(results: dict[str, Any], path: Path) -> Path | None:
    rows = [("baseline", results["baseline"].get("bias_variance"))]
    rows += [(c["name"], c.get("bias_variance")) for c in results["configurations"]]
    rows = [(n, bv) for n, bv in rows if bv]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4, 1.3 * len(rows) + 2), 3.5))
    fields = (("bias", "bias"), ("variance", "variance"), ("net_variance", "net variance"))
    width = 0.8 / len(fields)
    for k, (field, label) in enumerate(fields):
        xs = [i + (k - 1) * width for i in range(len(rows))]
        ax.bar(xs, [bv[field] for _, bv in rows], width, label=label)
    ax.set_xticks(range(len(rows)), [n for n, _ in rows], rotation=30, ha="right")
    ax.set_ylabel("0-1 loss terms over seeds (per pixel)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_bias_variance_per_class(results: dict[str, Any], path: Path) -> Path | None:
    """Per class: bias and variance of the baseline and of the best configuration, side by side."""
    base = (results["baseline"].get("bias_variance") or {}).get("per_class") or {}
    best = next((c for c in results["configurations"] if c["name"] == results.get("best")), None)
    other = ((best or {}).get("bias_variance") or {}).get("per_class") or {}
    names = [n for n in base if base[n].get("bias") is not None]
    if not names or not other:
        return None
    plt = _plt()
    fig, axes = plt.subplots(2, 1, figsize=(max(6, 0.55 * len(names) + 2), 5.5), sharex=True)
    width = 0.4
    for ax, field in zip(axes, ("bias", "variance"), strict=True):
        for k, (label, per) in enumerate((("baseline", base), (best["name"], other))):  # type: ignore[index]
            xs = [i + (k - 0.5) * width for i in range(len(names))]
            ax.bar(xs, [per.get(n, {}).get(field) or 0.0 for n in names], width, label=label)
        ax.set_ylabel(field)
        ax.legend(fontsize=7)
    axes[1].set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    axes[0].set_title("0-1 loss over seeds, per class (pixels of that class)", fontsize=9)
    return _save(fig, path)


def plot_teacher_vs_gain(results: dict[str, Any], path: Path) -> Path | None:
    rows = [
        c
        for c in results["configurations"]
        if c.get("teacher_entropy") is not None and c["gain_mean"] is not None
    ]
    if not rows:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5), sharey=True)
    for ax, field, label in (
        (axes[0], "teacher_entropy", "teacher mean entropy / log C"),
        (axes[1], "teacher_ece", "teacher ECE (15 bins)"),
    ):
        for c in rows:
            ax.scatter(c[field], 100 * c["gain_mean"])
            ax.annotate(c["name"], (c[field], 100 * c["gain_mean"]), fontsize=7)
        ax.set_xlabel(label)
    axes[0].set_ylabel("student gain (mIoU points)")
    return _save(fig, path)


def _bias_variance_table(results: dict[str, Any]) -> list[str]:
    rows = [("student baseline", results["baseline"].get("bias_variance"))]
    rows += [(c["name"], c.get("bias_variance")) for c in results["configurations"]]
    rows = [(n, bv) for n, bv in rows if bv]
    if not rows:
        return []
    lines = [
        "## Bias and variance over seeds (Domingos 2000, 0-1 loss per pixel)",
        "",
        "| students | loss | bias | variance | unbiased var. | biased var. | net variance |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, bv in rows:
        lines.append(
            f"| {name} | {bv['loss']:.4f} | {bv['bias']:.4f} | {bv['variance']:.4f} | "
            f"{bv['unbiased_variance']:.4f} | {bv['biased_variance']:.4f} | "
            f"{bv['net_variance']:.4f} |"
        )
    lines += [
        "",
        "loss = bias + net variance; bias: the seeds' majority vote is wrong; "
        "variance: how often a seed disagrees with the vote.",
        "",
    ]
    return lines


def _teacher_table(results: dict[str, Any]) -> list[str]:
    rows = [c for c in results["configurations"] if c.get("teacher_entropy") is not None]
    if not rows:
        return []
    lines = [
        "## Teachers: how their outputs look and how well they teach",
        "",
        "| configuration | teacher mIoU | entropy / log C | ECE | student gain |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in rows:
        gain = "—" if c["gain_mean"] is None else f"{100 * c['gain_mean']:+.1f}"
        t = "—" if c["teacher_miou"] is None else f"{100 * c['teacher_miou']:.1f}"
        lines.append(
            f"| {c['name']} | {t} | {c['teacher_entropy']:.3f} | {c['teacher_ece']:.3f} | {gain} |"
        )
    return [*lines, ""]


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write ``report.md`` and its PNGs into `out_dir` (default ``<run_dir>/report``)."""
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results.json (run the experiment or sweep first)")
    results = json.loads(path.read_text())
    out = Path(out_dir) if out_dir else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    if results.get("kind") == "sweep":
        return _sweep_report(results, out, run_dir)
    return _experiment_report(results, out)


def _sweep_report(results: dict[str, Any], out: Path, run_dir: Path) -> Path:
    name = results.get("plan", {}).get("name", "sweep")
    lines = [f"# {name}", "", sweep_markdown(results)]
    plots = [
        ("Gain over the baseline", plot_gains(results, out / "gains.png")),
        ("mIoU vs student latency", plot_pareto(results, out / "pareto.png")),
        ("Per-class IoU", plot_per_class(results, out / "per_class_iou.png")),
        ("Bias and variance", plot_bias_variance(results, out / "bias_variance.png")),
        (
            "Bias and variance per class",
            plot_bias_variance_per_class(results, out / "bias_variance_per_class.png"),
        ),
        (
            "Teacher entropy and ECE vs gain",
            plot_teacher_vs_gain(results, out / "teacher_vs_gain.png"),
        ),
    ]
    for title, png in plots:
        if png is not None:
            lines += [f"## {title}", "", f"![{title}]({png.name})", ""]
    samples = run_dir / str(results.get("samples_png") or "samples.png")
    if samples.is_file():
        shutil.copyfile(samples, out / "samples.png")
        lines += ["## Sample predictions", "", "![Sample predictions](samples.png)", ""]
    lines += _bias_variance_table(results)
    lines += _teacher_table(results)
    walls = [
        f"| {c['name']} | {c.get('wall_time_s_total') or 0:.0f} | "
        f"{c.get('device_hours') or 0:.4f} |"
        for c in results["configurations"]
    ]
    lines += [
        "## Compute",
        "",
        "| configuration | wall time (s, all seeds) | device-hours |",
        "|---|---:|---:|",
        *walls,
        "",
    ]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


def plot_experiment_pareto(results: dict[str, Any], path: Path) -> Path | None:
    """mIoU vs latency of the experiment's models (teacher, baseline, distilled)."""
    rows = [r for r in results["rows"] if r.get("latency_ms") and r.get("miou") is not None]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    pts = [(r["latency_ms"], r["miou"]) for r in rows]
    front = pareto_front(pts)
    for i, r in enumerate(rows):
        ax.scatter(pts[i][0], 100 * pts[i][1], color="tab:red" if i in front else "tab:blue")
        ax.annotate(r["model"], (pts[i][0], 100 * pts[i][1]), fontsize=8, xytext=(4, 4),
                    textcoords="offset points")  # fmt: skip
    ax.plot(
        [pts[i][0] for i in front], [100 * pts[i][1] for i in front], "r--", label="Pareto front"
    )
    ax.set_xlabel("latency (ms, median)")
    ax.set_ylabel("mIoU (%)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_experiment_per_class(results: dict[str, Any], path: Path) -> Path | None:
    """Per-class IoU of each model of the experiment (`iou_by_model`: label -> class -> IoU)."""
    by_model = results.get("iou_by_model") or {}
    return _per_class_bars(list(by_model.items()), path)


def _experiment_report(results: dict[str, Any], out: Path) -> Path:
    """One experiment's table (teacher, baseline, distilled) and its gap closed."""

    def cell(v: Any, spec: str, scale: float = 1.0) -> str:
        return "—" if v is None else format(scale * v, spec)

    lines = [
        "# Experiment " + str(results.get("experiment_id", "")),
        "",
        "| model | mIoU | gain over baseline | params (M) | latency (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        gain = None if r["stage"] == "student" else r.get("gain_over_baseline")
        lines.append(
            f"| {r['model']} | {cell(r.get('miou'), '.1f', 100)} | {cell(gain, '+.1f', 100)} "
            f"| {cell(r.get('params'), '.3f', 1e-6)} | {cell(r.get('latency_ms'), '.2f')} |"
        )
    gap = results.get("gap_closed")
    lines += [
        "",
        f"mIoU in %. Gap closed: {cell(gap, '.0f', 100)}{'' if gap is None else '%'}.",
        "",
    ]
    plots = [
        ("Per-class IoU", plot_experiment_per_class(results, out / "per_class_iou.png")),
        ("mIoU vs latency", plot_experiment_pareto(results, out / "pareto.png")),
    ]
    if (out / "samples.png").is_file():
        plots.append(("Sample predictions", out / "samples.png"))
    for title, png in plots:
        if png is not None:
            lines += [f"## {title}", "", f"![{title}]({png.name})", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
