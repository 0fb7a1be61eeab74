"""The profiler's W&B runs against real wandb in offline mode, read back from the run folders."""

from __future__ import annotations

import pytest
from torch import nn

from distillery.profiler import BudgetNotMetError, profile_model, search_student_width
from distillery.spec import ExperimentSpec, ProfilingSpec, TrackingSpec
from distillery.stages.profile_tracking import (
    GRID_COLUMNS,
    WIDTH_COLUMNS,
    log_comparison,
    log_profile_run,
    log_size_run,
)
from tests.support.wandb_runs import read_offline_run, read_offline_table

FAST = dict(warmup=1, min_repeats=3, max_repeats=3, max_time_s=2)
OFFLINE = TrackingSpec(mode="offline")
ROW_KEYS = (
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "images_per_s",
    "gflops_per_s",
    "fraction_of_peak",
    "peak_memory_mb",
    "stable",
    "status",
)


def experiment(budget_ms: float, tracking: str = "offline") -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {
            "name": "track-test",
            "data": {
                "train": [{"format": "cityscapes", "root": "/nowhere"}],
                "val": [{"format": "cityscapes", "root": "/nowhere"}],
            },
            "student": {"model": {"width": "auto", "depth": 2}},
            "profiling": {
                "input_size": [32, 64],
                "latency_budget_ms": budget_ms,
                "auto_widths": [2, 4],
                "device": "cpu",
                **FAST,
            },
            "tracking": {"mode": tracking},
        }
    )


def convs(depth: int, channels: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1)]
    layers += [nn.Conv2d(channels, channels, 3, padding=1) for _ in range(depth)]
    return nn.Sequential(*layers)


@pytest.fixture(scope="module")
def reports():
    spec = ProfilingSpec(
        input_size=(16, 32),
        batch_sizes=[1, 2],
        variants=["eager", "channels_last"],
        latency_budget_ms=10_000,
        **FAST,
    )
    teacher = profile_model(convs(2, 16), spec, device="cpu")
    student = profile_model(convs(1, 8), spec, device="cpu")
    return spec, {"teacher": teacher, "student": student}


def test_profile_run_holds_config_summary_budget_and_grid(tmp_path, reports):
    spec, by_model = reports
    info = log_profile_run(by_model, spec, OFFLINE, tmp_path, name="exp-profile", group="exp-1")
    assert info is not None and info["dir"].startswith(str(tmp_path))
    run = read_offline_run(info["dir"])
    assert (run.group, run.job_type, run.name, run.exit_code) == (
        "exp-1",
        "profile",
        "exp-profile",
        0,
    )
    device = by_model["student"].device
    assert run.config["device"]["name"] == device.name and run.config["threads"] == 1
    assert run.config["torch_version"] == device.torch_version
    assert "onnxruntime_version" in run.config and "driver_version" in run.config
    assert run.config["input_size"] == [16, 32] and run.config["precision"] == "fp32"
    assert run.config["variants"] == ["eager+fp32", "channels_last+fp32"]
    assert run.config["models"]["teacher"]["params"] > run.config["models"]["student"]["params"]

    s = run.summary
    for model, report in by_model.items():
        for row in report.rows:
            key = f"{model}/{row.variant}/b{row.batch_size}"
            assert all(f"{key}/{k}" in s for k in ROW_KEYS), key
            assert s[f"{key}/p50_ms"] == pytest.approx(row.latency_ms.p50)
            assert s[f"{key}/p50_ms"] <= s[f"{key}/p90_ms"] <= s[f"{key}/p99_ms"]
        for f in report.fastest:
            assert s[f"{model}/fastest/b{f.batch_size}/variant"] == f.variant
        assert s[f"{model}/budget/verdict"] == "pass" and s[f"{model}/budget/passed"] is True
        assert s[f"{model}/budget/margin_ms"] == pytest.approx(report.budget.margin_ms)
        assert s[f"{model}/params"] == report.model.params

    grid = read_offline_table(info["dir"], "grid")
    assert len(grid) == 8 and list(grid[0]) == GRID_COLUMNS  # 2 models x 2 variants x 2 batches
    for model, report in by_model.items():
        for f in report.fastest:
            starred = [
                r
                for r in grid
                if r["model"] == model and r["batch_size"] == f.batch_size and r["fastest"] == "★"
            ]
            assert [r["variant"] for r in starred] == [f.variant]
            assert starred[0]["p50_ms"] == pytest.approx(f.p50_ms)


def test_disabled_logs_nothing(tmp_path, reports):
    spec, by_model = reports
    off = TrackingSpec(mode="disabled")
    assert log_profile_run(by_model, spec, off, tmp_path / "p", name="n", group="g") is None
    assert (
        log_comparison({"rows": []}, experiment(1e4, "disabled"), tmp_path / "c", group="g") is None
    )
    assert not (tmp_path / "p").exists() and not (tmp_path / "c").exists()


def test_size_run_tables_each_candidate(tmp_path):
    spec = experiment(budget_ms=60_000)
    search = search_student_width(spec)
    info = log_size_run(search, spec, tmp_path, group="track-test-1")
    run = read_offline_run(info["dir"])
    assert (run.group, run.job_type, run.name) == ("track-test-1", "size", "track-test-size")
    assert run.config["budget_ms"] == 60_000 and run.config["auto_widths"] == [2, 4]
    assert run.config["student"]["model"]["width"] == "auto"  # the spec, as in training runs
    assert run.summary["chosen_width"] == 4 and run.summary["budget/verdict"] == "pass"
    assert run.summary["budget/margin_ms"] == pytest.approx(search.candidates[1].margin_ms)
    assert run.summary["width/2/fits"] is True and run.summary["width/4/latency_ms"] > 0
    rows = read_offline_table(info["dir"], "width_search")
    assert list(rows[0]) == WIDTH_COLUMNS
    assert [(r["width"], r["verdict"], r["chosen"]) for r in rows] == [
        (2, "pass", False),
        (4, "pass", True),
    ]
    assert rows[1]["latency_ms"] == pytest.approx(search.candidates[1].latency_ms)


def test_a_search_that_misses_the_budget_is_a_failed_run(tmp_path):
    spec = experiment(budget_ms=1e-6)
    with pytest.raises(BudgetNotMetError) as caught:
        search_student_width(spec)
    info = log_size_run(caught.value.search, spec, tmp_path, group="g", failed=True)
    run = read_offline_run(info["dir"])
    assert run.exit_code == 1 and "chosen_width" not in run.summary
    assert run.summary["budget/verdict"] == "fail" and run.summary["budget/margin_ms"] < 0
    rows = read_offline_table(info["dir"], "width_search")
    assert [(r["width"], r["verdict"]) for r in rows] == [(2, "fail"), (4, "skipped")]


def test_comparison_table(tmp_path):
    results = {
        "rows": [
            {"stage": "teacher", "model": "teacher", "miou": 0.6, "params": 1000, "gflops": 2.0,
             "latency_ms": 9.0},
            {"stage": "student", "model": "student (baseline)", "miou": 0.4, "params": 100,
             "gflops": 0.2, "latency_ms": 1.0},
            {"stage": "distill", "model": "student (distilled)", "miou": 0.5, "params": 100,
             "gflops": 0.2, "latency_ms": 1.0},
        ],
        "gap_closed": 0.5,
        "budget": {"verdict": "pass", "margin_ms": 3.0},
    }  # fmt: skip
    info = log_comparison(results, experiment(1e4), tmp_path, group="g")
    run = read_offline_run(info["dir"])
    assert (run.group, run.job_type) == ("g", "comparison")
    assert run.summary["gap_closed"] == 0.5 and run.summary["distill/miou"] == 0.5
    assert run.summary["budget/verdict"] == "pass"
    rows = read_offline_table(info["dir"], "comparison")
    assert [(r["stage"], r["miou"], r["latency_ms"]) for r in rows] == [
        ("teacher", 0.6, 9.0),
        ("student", 0.4, 1.0),
        ("distill", 0.5, 1.0),
    ]
