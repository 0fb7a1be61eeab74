"""The report: Pareto front by hand, Markdown and PNGs from a sweep's results.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distillery.cli.main import app
from distillery.research.report import pareto_front, write_report
from distillery.research.summary import ConfigResult, SeedResult, sweep_summary

PNG = b"\x89PNG\r\n\x1a\n"


def test_pareto_front_by_hand() -> None:
    # (latency, mIoU): b is slower and worse than a; d ties a on latency but is worse;
    # c is the slowest and the best; e is the fastest
    pts = [(2.0, 0.5), (3.0, 0.4), (5.0, 0.6), (2.0, 0.45), (1.0, 0.3)]
    assert pareto_front(pts) == [4, 0, 2]
    assert pareto_front([(1.0, 0.5), (1.0, 0.5)]) == [0, 1]  # equal points dominate neither
    assert pareto_front([]) == []


def _results() -> dict:
    bv = {"pixels": 10, "loss": 0.3, "bias": 0.2, "variance": 0.15, "unbiased_variance": 0.1,
          "biased_variance": 0.05, "net_variance": 0.1,
          "per_class": {"road": {"bias": 0.1, "variance": 0.2},
                        "car": {"bias": 0.5, "variance": 0.1},
                        "bicycle": {"bias": None, "variance": None}}}  # fmt: skip
    iou = [{"road": 0.9, "car": 0.2, "bicycle": None}, {"road": 0.8, "car": 0.3, "bicycle": 0.01}]
    configs = [
        ConfigResult(
            name,
            {"distillation.losses.1.temperature": t},
            [SeedResult(0, 0.25 + d, iou[0], 12.0), SeedResult(1, 0.27 + d, iou[1], 13.0)],
            extra={
                "latency_ms": lat,
                "teacher_entropy": ent,
                "teacher_ece": 0.1 + d,
                "wall_time_s_total": 25.0,
                "device_hours": 25 / 3600,
            },  # fmt: skip
        )
        for name, t, d, lat, ent in (("T1", 1, 0.0, 2.0, 0.2), ("T4", 4, 0.03, 2.0, 0.4))
    ]
    out = sweep_summary(configs, [SeedResult(0, 0.2, iou[0]), SeedResult(1, 0.21, iou[1])], 0.35)
    out["baseline"]["bias_variance"] = bv
    for c in out["configurations"]:
        c["bias_variance"] = bv
    out["baseline_latency_ms"] = 2.0
    out["plan"] = {"name": "demo"}
    return out


def test_sweep_report_writes_markdown_and_every_plot(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text(json.dumps(_results()))
    report = write_report(tmp_path)
    assert report == tmp_path / "report" / "report.md"
    text = report.read_text()
    assert text.startswith("# demo")
    for png in (
        "gains",
        "pareto",
        "per_class_iou",
        "bias_variance",
        "bias_variance_per_class",
        "teacher_vs_gain",
    ):
        path = report.parent / f"{png}.png"
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 2000, png
        assert f"]({png}.png)" in text
    # T4: mIoU 0.28, 0.30 (sd 0.0141); gains 0.08, 0.09: mean 0.085 ± 12.706 * 0.00707 / sqrt 2
    assert "| T4 | 2 | 29.0 ± 1.4 | +8.5 | [+2.1, +14.9] |" in text
    assert "| T1 | 0.2000 | 0.1500 |" not in text and "| T1 | 0.3000 | 0.2000 | 0.1500 |" in text
    assert "| T4 | 35.0 | 0.400 | 0.130 | +8.5 |" in text


def test_report_command_and_errors(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "no results.json" in " ".join(result.output.split())
    (tmp_path / "results.json").write_text(json.dumps(_results()))
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "pareto.png" in result.output and (tmp_path / "r" / "report.md").is_file()


def test_report_of_one_experiment(tmp_path: Path) -> None:
    rows = [
        {
            "stage": s,
            "model": s,
            "miou": m,
            "gain_over_baseline": None,
            "params": None,
            "gflops": None,
            "latency_ms": None,
            "latency_at": None,
        }  # fmt: skip
        for s, m in (("teacher", 0.4), ("student", 0.2), ("distill", 0.25))
    ]
    (tmp_path / "results.json").write_text(
        json.dumps({"rows": rows, "gap_closed": 0.25, "experiment_id": "abc"})
    )
    text = write_report(tmp_path).read_text()
    assert "# Experiment abc" in text and "| teacher | 40.0 |" in text
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path / "nope")
