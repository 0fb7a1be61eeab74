"""Every objective is DDP-safe: each loss kind alone (feature-only ones included), alternating
objectives and online mode train 2 steps on 2 gloo processes with identical weights on both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distillery.models import build_model
from distillery.models.checkpoint import save_model_checkpoint
from distillery.spec import ModelSpec
from distillery.training.launcher import free_port

WORKER = Path(__file__).with_name("ddp_objectives_worker.py")


@pytest.mark.slow
def test_every_objective_trains_on_two_processes(data_root: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(WORKER.parent))
    from ddp_objectives_worker import CASES

    spec = ModelSpec(width=4, depth=2)
    teacher = save_model_checkpoint(tmp_path / "teacher.pt", build_model(spec), spec)
    out = tmp_path / "out"
    out.mkdir()
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
        "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        str(WORKER), str(data_root), str(teacher), str(out),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    ranks = [json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert list(ranks[0]) == list(CASES)
    assert ranks[0] == ranks[1]  # DDP kept both processes' weights identical
