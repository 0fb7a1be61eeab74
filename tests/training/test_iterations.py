"""Iteration-based training: `max_steps` ends inside an epoch, `save_every_steps` checkpoints
mid-epoch (``ckpt/step-<n>/``), and a run killed after one resumes to the unbroken run's weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distillery.models.checkpoint import load_model_checkpoint
from distillery.training import Progress, StageCancelled, StageHooks, run_stage

# 12 images, batch 4: 3 steps per epoch; 5 steps end inside epoch 2
TRAIN = {"max_steps": 5, "save_every_steps": 2, "epochs": 1}


def test_max_steps_and_save_every_steps(make_spec, tmp_path: Path) -> None:
    events: list[Progress] = []
    saved: list[int] = []
    hooks = StageHooks(on_progress=events.append, on_checkpoint=lambda n, d: saved.append(n))
    result = run_stage(make_spec(student={"train": TRAIN}), "student", tmp_path, hooks=hooks)
    steps = [(p.epoch, p.step) for p in events if p.kind == "step"]
    assert steps == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)]  # epochs ignored: 5 steps
    assert [h["global_step"] for h in result.history] == [3, 5]
    assert saved == [2, 3, 4, 5]  # every 2 steps, and at each epoch end
    assert result.checkpoint_dir.name == "step-5"
    lrs = [p.metrics["lr"] for p in events if p.kind == "step"]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.2 * lrs[0]  # the schedule spans 5


def test_a_kill_after_a_mid_epoch_checkpoint_resumes_exactly(make_spec, tmp_path: Path) -> None:
    spec = make_spec(student={"train": TRAIN})
    straight = run_stage(spec, "student", tmp_path / "a")

    calls = {"n": 0}

    def stop() -> bool:  # polled before each batch: stop before step 5 (last save: step 4)
        calls["n"] += 1
        return calls["n"] >= 5

    with pytest.raises(StageCancelled):
        run_stage(spec, "student", tmp_path / "b", hooks=StageHooks(should_stop=stop))
    kept = sorted(p.name for p in (tmp_path / "b" / "student" / "ckpt").iterdir())
    assert kept == ["step-3", "step-4"]
    resumed = run_stage(spec, "student", tmp_path / "b")
    wa = load_model_checkpoint(straight.model_path)[0].state_dict()
    wb = load_model_checkpoint(resumed.model_path)[0].state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=k)
    assert resumed.metrics["miou"] == pytest.approx(straight.metrics["miou"])


def test_eval_every_steps_validates_mid_epoch_and_at_the_end(make_spec, tmp_path: Path) -> None:
    events: list[Progress] = []
    train = {"max_steps": 5, "eval_every_steps": 2}
    spec = make_spec(student={"train": train})
    result = run_stage(spec, "student", tmp_path, hooks=StageHooks(on_progress=events.append))
    assert [h["global_step"] for h in result.history] == [2, 4, 5]  # not at the epoch end (3)
    evals = [(p.epoch, p.step) for p in events if p.kind == "epoch"]
    assert evals == [(1, 2), (2, 1), (2, 2)]
    assert all("miou" in p.metrics for p in events if p.kind == "epoch")
    assert result.metrics["miou"] == result.history[-1]["miou"]
