"""The report: rows per (variant, batch), device and model info, derived figures, formats."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from rich.table import Table

from distillery.models import UNet
from distillery.profiler import ProfileReport, format_report, profile_model, report_markdown
from distillery.spec import ProfilingSpec

SPEC = ProfilingSpec(
    input_size=(32, 64),
    batch_sizes=[1, 2],
    warmup=1,
    min_repeats=3,
    max_repeats=5,
    max_time_s=2,
)
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None


@pytest.fixture(scope="module")
def report() -> ProfileReport:
    variants = ["eager", "bf16", "fp16", "channels_last", *(["onnx"] if HAS_ORT else [])]
    return profile_model(UNet(width=4, depth=2), SPEC, device="cpu", variants=variants)


def test_rows_cover_variant_by_batch(report: ProfileReport):
    expected = {"eager+fp32", "eager+bf16", "eager+fp16", "channels_last+fp32"}
    expected |= {"onnx+fp32"} if HAS_ORT else set()
    assert {r.variant for r in report.rows} == expected
    assert len(report.rows) == 2 * len(expected)
    for r in report.rows:
        assert r.input_size == (32, 64) and r.batch_size in (1, 2)
        assert r.precision == r.variant.split("+")[1]


def test_fp16_on_cpu_says_unsupported(report: ProfileReport):
    for b in (1, 2):
        row = report.row("eager+fp16", b)
        assert row.status == "unsupported" and "fp16" in row.note and "CPU" in row.note
        assert row.latency_ms is None


def test_figures_are_consistent(report: ProfileReport):
    peaks = {p.precision: p.gflops_per_s for p in report.peaks}
    for r in report.rows:
        if r.status != "ok":
            continue
        lat = r.latency_ms
        assert lat.repeats >= 3 and lat.min <= lat.p50 <= lat.p99 <= lat.max
        assert r.images_per_s == pytest.approx(r.batch_size * 1000 / lat.p50)
        flops = report.model.flops_per_image * r.batch_size
        assert r.gflops_per_s == pytest.approx(flops / (lat.p50 / 1e3) / 1e9)
        assert r.fraction_of_peak == pytest.approx(r.gflops_per_s / peaks[r.precision])
        assert r.peak_memory_mb is not None and r.peak_memory_mb >= 0 and r.memory_method
    assert {r.status for r in report.rows if r.precision != "fp16"} == {"ok"}


def test_one_fastest_row_per_batch_size(report: ProfileReport):
    for b in (1, 2):
        ok = [r for r in report.rows if r.batch_size == b and r.status == "ok"]
        starred = [r for r in ok if r.fastest]
        assert len(starred) == 1
        assert starred[0].latency_ms.p50 == min(r.latency_ms.p50 for r in ok)
    assert [(f.batch_size, f.variant) for f in report.fastest] == [
        (b, next(r.variant for r in report.rows if r.fastest and r.batch_size == b)) for b in (1, 2)
    ]


def test_device_and_model_are_recorded(report: ProfileReport):
    d = report.device
    assert d.type == "cpu" and d.cpu_model and d.name == d.cpu_model
    assert d.torch_version == torch.__version__
    assert d.num_threads == torch.get_num_threads()
    m = report.model
    assert (m.arch, m.width, m.depth, m.separable) == ("unet", 4, 2, False)
    assert m.params == sum(p.numel() for p in UNet(width=4, depth=2).parameters())
    assert m.input_size == (32, 64)


def test_json_round_trip(report: ProfileReport):
    again = ProfileReport.model_validate_json(report.model_dump_json())
    assert again == report


def test_table_and_markdown(report: ProfileReport):
    table = format_report(report)
    assert isinstance(table, Table) and table.row_count == len(report.rows)
    md = report_markdown(report)
    assert "★" in md and report.device.cpu_model in md and "32x64" in md
    assert "1 multiply-add = 2 FLOPs" in md
    assert md.count("\n| ") == len(report.rows) + 1  # header + one line per row


def test_memory_grows_with_batch():
    spec = ProfilingSpec(input_size=(64, 128), warmup=1, min_repeats=3, max_repeats=3)
    report = profile_model(UNet(width=8, depth=2), spec, device="cpu", batch_sizes=[1, 8])
    one, eight = (report.row("eager+fp32", b).peak_memory_mb for b in (1, 8))
    assert eight > 2 * one, (one, eight)


def test_the_callers_model_is_left_alone():
    model = UNet(width=4, depth=2).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    profile_model(model, SPEC, device="cpu", variants=["channels_last"], batch_sizes=[1])
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.encoder[0][0].weight.is_contiguous()  # not turned channels_last


def test_budget_batch_size_is_added_to_the_spec_batch_sizes():
    spec = SPEC.model_copy(update={"batch_sizes": [2], "latency_budget_ms": 1e6})
    report = profile_model(UNet(width=4, depth=2), spec, device="cpu")
    assert report.batch_sizes == [1, 2]
