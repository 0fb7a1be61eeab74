"""Runtime settings: CPU threads divided among processes and workers, TF32 and cudnn choices,
all recorded in the stage result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distillery.spec import TrainSpec
from distillery.training import run_stage
from distillery.training.runtime import apply_runtime, default_threads, resolve_threads


def test_default_threads_divide_the_cores_among_processes_and_workers() -> None:
    assert default_threads(1, 0, cores=16) == 16
    assert default_threads(2, 4, cores=16) == 4
    assert default_threads(4, 4, cores=8) == 1  # never below one


def test_explicit_threads_win_then_omp_num_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert resolve_threads(TrainSpec(num_threads=2), 0) == 2
    assert resolve_threads(TrainSpec(), 0) == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert resolve_threads(TrainSpec(num_processes=2), 0) == default_threads(2, 0)


def test_with_num_threads_sets_every_training_stage(make_spec) -> None:
    spec = make_spec(distillation={"train": {"epochs": 1}}).with_num_threads(3)
    trains = (spec.teacher.train, spec.student.train, spec.distill_train)
    assert [t.num_threads for t in trains] == [3, 3, 3]


def test_the_stage_result_records_the_runtime(make_spec, tmp_path: Path) -> None:
    before = torch.get_num_threads()
    spec = make_spec(student={"train": {"epochs": 1, "max_steps_per_epoch": 1, "num_threads": 1}})
    result = run_stage(spec, "student", tmp_path)
    assert result.runtime == {
        "device": "cpu",
        "num_threads": 1,
        "tf32": False,
        "cudnn_benchmark": False,
        "world_size": 1,
        "mixed_precision": "no",
    }
    saved = json.loads((tmp_path / "student" / "result.json").read_text())
    assert saved["runtime"] == result.runtime
    torch.set_num_threads(before)


@pytest.mark.gpu
def test_cuda_runtime_sets_tf32_and_cudnn_benchmark_as_asked() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    record = apply_runtime(TrainSpec(tf32=False, num_threads=2), 0, torch.device("cuda"))
    assert record["tf32"] is False and not torch.backends.cuda.matmul.allow_tf32
    assert not torch.backends.cudnn.allow_tf32 and torch.backends.cudnn.benchmark
    assert apply_runtime(TrainSpec(), 0, torch.device("cuda"))["tf32"] is True
    assert torch.backends.cuda.matmul.allow_tf32
