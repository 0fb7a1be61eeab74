"""CUDA paths the CPU tests cannot see: teacher/student/distil training in bf16 and fp16,
online fp16 with gradient clipping, the process-count check, prediction, and the profiler's
CUDA-event timing and compile. Run by benchmarks/gpu_check.sh (a few minutes on one GPU)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from distillery.predict import predict_folder
from distillery.profiler import profile_model
from distillery.spec import ProfilingSpec
from distillery.training import run_stage

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_teacher_student_and_distill_train_on_cuda(
    precision: str, make_spec, tmp_path: Path
) -> None:
    train = {"epochs": 1, "max_steps_per_epoch": 2, "mixed_precision": precision}
    spec = make_spec(teacher={"train": train}, student={"train": train})
    teacher = run_stage(spec, "teacher", tmp_path)
    assert teacher.runtime["device"] == "cuda" and teacher.runtime["cudnn_benchmark"] is True
    student = run_stage(spec, "student", tmp_path)
    distill = run_stage(spec, "distill", tmp_path, teacher_path=teacher.model_path)
    for r in (teacher, student, distill):
        assert r.history[-1]["global_step"] == 2
        assert math.isfinite(r.history[-1]["train"]["loss"]) and 0 <= r.metrics["miou"] <= 1


def test_online_fp16_with_clipping_steps_both_models(
    make_spec, teacher_model: Path, tmp_path: Path
) -> None:
    train = {"epochs": 1, "max_steps_per_epoch": 3, "mixed_precision": "fp16",
             "grad_clip_norm": 1.0}  # fmt: skip
    spec = make_spec(student={"train": train}, distillation={"mode": "online"})
    result = run_stage(spec, "distill", tmp_path, teacher_path=teacher_model)
    assert result.history[-1]["global_step"] == 3
    assert math.isfinite(result.history[-1]["train"]["teacher_loss"])
    assert "teacher" in result.extra_models


def test_more_processes_than_gpus_fail_before_launch(make_spec, tmp_path: Path) -> None:
    n = torch.cuda.device_count() + 1
    spec = make_spec(student={"train": {"epochs": 1, "num_processes": n}})
    with pytest.raises(ValueError, match=f"train.num_processes {n} is more than"):
        run_stage(spec, "student", tmp_path)
    assert not (tmp_path / "student" / "launch").exists()


def test_predict_on_cuda_matches_the_cpu(teacher_model: Path, data_root: Path, tmp_path: Path):
    from PIL import Image

    images = data_root / "leftImg8bit" / "val"
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:  # full fp32 on both sides: only summation order differs
        predict_folder(teacher_model, images, tmp_path / "gpu", device="cuda")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    predict_folder(teacher_model, images, tmp_path / "cpu", device="cpu")
    pngs = sorted((tmp_path / "cpu").glob("*.png"))
    same = [
        (torch.as_tensor(list(Image.open(p).getdata()))
         == torch.as_tensor(list(Image.open(tmp_path / "gpu" / p.name).getdata()))).float().mean()
        for p in pngs
    ]  # fmt: skip
    assert pngs and min(same) > 0.99  # a near-tie may flip a pixel


def test_profiler_times_with_cuda_events_and_compiles() -> None:
    from distillery.models import build_model
    from distillery.spec import ModelSpec

    model = build_model(ModelSpec(width=8, depth=2))
    spec = ProfilingSpec(input_size=(64, 128), warmup=1, min_repeats=3, max_repeats=5)
    report = profile_model(
        model, spec, device="cuda", variants=["eager", "fp16", "compile"], batch_sizes=[1, 2]
    )
    for variant in ("eager+fp32", "eager+fp16", "compile+fp32"):
        for b in (1, 2):
            row = report.row(variant, b)
            assert row.status == "ok", row.note
            assert row.latency_ms.timer == "cuda-events"
    assert (
        report.row("compile+fp32", 1).latency_ms.first_call
        > report.row("compile+fp32", 1).latency_ms.p50
    )
