"""Variant names, and variants this machine cannot run."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from pydantic import ValidationError

from distillery.profiler import parse_variant, parse_variants, profile_model
from distillery.profiler.variants import Variant, unavailable_reason
from distillery.spec import ProfilingSpec

TINY = ProfilingSpec(input_size=(16, 16), warmup=0, min_repeats=3, max_repeats=3)


def test_parse_variant_forms():
    assert parse_variant("eager") == Variant("eager", None)
    assert parse_variant("bf16") == Variant("eager", "bf16")
    assert parse_variant(" channels_last+fp16 ") == Variant("channels_last", "fp16")
    assert [v.name for v in parse_variants("eager,bf16,onnx", "fp32")] == [
        "eager+fp32",
        "eager+bf16",
        "onnx+fp32",
    ]
    assert [v.name for v in parse_variants(["eager", "eager+fp32"], "fp32")] == ["eager+fp32"]


@pytest.mark.parametrize("bad", ["tensorrt", "eager+int8", "bf16+eager", "eager+bf16+x", ""])
def test_unknown_variants_are_clear_errors(bad: str):
    with pytest.raises(ValueError, match="unknown profiling variant"):
        parse_variant(bad)


def test_spec_rejects_unknown_variant():
    with pytest.raises(ValidationError, match="runtime one of eager, channels_last"):
        ProfilingSpec(variants=["eager", "tensorrt"])


def test_compile_without_a_compiler_is_reported_unavailable():
    """Points inductor at a compiler that does not exist (the real config it reads)."""
    from torch._inductor import config

    with config.patch({"cpp.cxx": (None, "/nonexistent/c++")}):
        status, note = unavailable_reason(Variant("compile", "fp32"), "cpu")
        report = profile_model(
            torch.nn.Conv2d(3, 4, 1),
            TINY.model_copy(update={"warmup": 1}),  # compile needs a warm-up call
            device="cpu",
            variants=["compile", "eager"],
            batch_sizes=[1],
        )
    assert status == "unavailable" and "C++ compiler" in note
    assert report.row("compile+fp32", 1).status == "unavailable"
    assert report.row("eager+fp32", 1).fastest


def test_onnx_with_low_precision_is_unsupported():
    status, note = unavailable_reason(Variant("onnx", "bf16"), "cpu")
    assert status == "unsupported" and "fp32" in note


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="no onnxruntime")
def test_onnx_runs_the_same_model():
    report = profile_model(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        TINY,
        device="cpu",
        variants=["onnx"],
        batch_sizes=[1, 3],
    )
    for b in (1, 3):
        row = report.row("onnx+fp32", b)
        assert row.status == "ok", row.note
        assert "onnxruntime" in row.note


@pytest.mark.slow
def test_compile_runs(conv_stack):
    """torch.compile on the CPU (C++ compilation, tens of seconds)."""
    spec = TINY.model_copy(update={"warmup": 1})
    report = profile_model(
        conv_stack(1, 8), spec, device="cpu", variants=["compile"], batch_sizes=[1]
    )
    row = report.row("compile+fp32", 1)
    assert row.status == "ok", row.note
    assert row.latency_ms.first_call > row.latency_ms.p50  # compilation is in the first call
