"""torch.compile is static-shape, per batch size, never timed without a warm-up; the ONNX
Runtime row names the provider that really ran (and binds device memory on CUDA)."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from distillery.profiler import profile_model
from distillery.profiler.format import HEADERS, report_markdown
from distillery.profiler.runners import OnnxRunner, TorchRunner, provider_label
from distillery.profiler.variants import Variant
from distillery.spec import ProfilingSpec

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None


def test_compile_refuses_warmup_zero() -> None:
    with pytest.raises(ValidationError, match="warmup is 0 but compile"):
        ProfilingSpec(variants=["eager", "compile+bf16"], warmup=0)
    spec = ProfilingSpec(input_size=(16, 16), warmup=0, min_repeats=3, max_repeats=3)
    with pytest.raises(ValueError, match="warmup >= 1"):
        profile_model(torch.nn.Conv2d(3, 4, 3, padding=1), spec, variants=["compile"])


def test_compile_is_static_and_fresh_per_batch_size(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    real_compile = torch.compile

    def recording_compile(model: torch.nn.Module, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real_compile(model, **kwargs)

    monkeypatch.setattr(torch, "compile", recording_compile)
    runner = TorchRunner(
        torch.nn.Conv2d(3, 4, 3), Variant("compile", "fp32"), (8, 8), torch.device("cpu")
    )
    runner.prepare(1)
    first = runner.model
    runner.prepare(1)  # the memory measurement reuses the batch size's compiled model
    assert runner.model is first
    runner.prepare(4)
    assert runner.model is not first
    assert calls == [{"dynamic": False}, {"dynamic": False}]


def test_the_table_shows_the_first_call_apart() -> None:
    spec = ProfilingSpec(input_size=(16, 16), warmup=1, min_repeats=3, max_repeats=3)
    report = profile_model(torch.nn.Conv2d(3, 4, 3, padding=1), spec, device="cpu")
    row = report.row("eager+fp32", 1)
    assert "1st call ms" in HEADERS and row.latency_ms.first_call is not None
    assert f"{row.latency_ms.first_call:.2f}" in report_markdown(report)


def test_provider_label_says_when_onnxruntime_fell_back() -> None:
    assert provider_label("cpu", ["CPUExecutionProvider"]) == "CPUExecutionProvider"
    assert provider_label("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == (
        "CUDAExecutionProvider"
    )
    assert "fell back" in provider_label("cuda", ["CPUExecutionProvider"])


@pytest.mark.skipif(not HAS_ORT, reason="no onnxruntime")
def test_onnx_row_is_labelled_from_the_session() -> None:
    runner = OnnxRunner(torch.nn.Conv2d(3, 4, 3, padding=1), (8, 8), torch.device("cpu"))
    try:
        assert runner.providers == runner.session.get_providers()
        assert runner.providers[0] in runner.note
        assert runner.prepare(2)()[0].shape == (2, 4, 8, 8)
    finally:
        runner.close()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_ORT, reason="no onnxruntime")
def test_onnx_on_cuda_binds_device_memory_or_says_it_fell_back() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = torch.nn.Conv2d(3, 4, 3, padding=1)
    runner = OnnxRunner(model, (16, 16), torch.device("cuda"))
    try:
        if runner.on_cuda:
            assert "IOBinding" in runner.note
            out = runner.prepare(2)()
            assert out.is_cuda and out.shape == (2, 4, 16, 16)
            x = torch.Generator().manual_seed(2)
            ref = model.cuda()(torch.randn(2, 3, 16, 16, generator=x).cuda())
            torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)
        else:
            assert "fell back" in runner.note
    finally:
        runner.close()
