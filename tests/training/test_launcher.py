"""A stage on 2 processes (`accelerate launch`, gloo on CPU): metrics reduced over both
processes, identical weights on both ranks, exact resume, and cancellation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from distillery.data import build_datasets
from distillery.training import Progress, StageCancelled, StageHooks, StagePaused, run_stage


def _ranks(stage_dir: Path) -> list[dict]:
    return [json.loads((stage_dir / "result" / f"rank-{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_two_processes_reduce_metrics_agree_on_weights_and_resume(
    make_spec, tmp_path: Path
) -> None:
    # 12 images, batch 2 per process x 2 processes: 3 steps per epoch
    spec = make_spec(student={"train": {"epochs": 2, "batch_size": 2, "num_processes": 2}})
    stage_dir = tmp_path / "student"

    events: list[Progress] = []
    saved: list[tuple[int, Path]] = []
    hooks = StageHooks(on_progress=events.append, on_checkpoint=lambda n, d: saved.append((n, d)))
    result = run_stage(spec, "student", tmp_path, hooks=hooks)
    steps = [(p.epoch, p.step, p.steps) for p in events if p.kind == "step"]
    assert steps == [(e, s, 3) for e in (1, 2) for s in (1, 2, 3)]  # streamed from the main rank
    assert [e for e, _ in saved] == [3, 6] and saved[-1][1] == result.checkpoint_dir
    assert [h["epoch"] for h in result.history] == [1, 2]

    ranks = _ranks(stage_dir)
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["state_hash"] == ranks[1]["state_hash"]  # DDP kept the weights identical
    assert ranks[0]["synced_norms"] == ranks[1]["synced_norms"] > 0  # train.sync_batchnorm

    # validation: disjoint shards, and the reduced confusion matrix counts every labelled pixel
    _, val = build_datasets(spec.data)
    all_names = {val[i]["name"] for i in range(len(val))}
    valid_pixels = sum(int((val[i]["mask"] != 255).sum()) for i in range(len(val)))
    shard0, shard1 = (set(r["val_names"]) for r in ranks)
    assert shard0 and shard1 and shard0.isdisjoint(shard1) and shard0 | shard1 == all_names
    assert all(0 < r["val_pixels_local"] < valid_pixels for r in ranks)
    assert sum(r["val_pixels_local"] for r in ranks) == valid_pixels
    assert [r["val_pixels_total"] for r in ranks] == [valid_pixels, valid_pixels]
    assert ranks[0]["miou"] == ranks[1]["miou"] == pytest.approx(result.metrics["miou"])

    # resume from epoch 1 on 2 processes: the same final weights as the unbroken run
    (stage_dir / "result.json").unlink()
    shutil.rmtree(stage_dir / "ckpt" / "step-6")
    events.clear()
    resumed = run_stage(spec, "student", tmp_path, hooks=StageHooks(on_progress=events.append))
    assert {p.epoch for p in events} == {2}
    assert [r["state_hash"] for r in _ranks(stage_dir)] == [ranks[0]["state_hash"]] * 2
    assert resumed.metrics["miou"] == pytest.approx(result.metrics["miou"])


@pytest.mark.slow
def test_stopping_a_multi_process_stage_ends_its_processes(make_spec, tmp_path: Path) -> None:
    spec = make_spec(student={"train": {"epochs": 1, "batch_size": 2, "num_processes": 2}})
    with pytest.raises(StageCancelled):
        run_stage(spec, "student", tmp_path, hooks=StageHooks(should_stop=lambda: True))
    assert not (tmp_path / "student" / "result.json").exists()
    assert _processes_mentioning(str(tmp_path)) == []  # the launcher and its ranks are gone


@pytest.mark.slow
def test_the_ranks_own_error_leads_the_stage_s_error(make_spec, tmp_path: Path) -> None:
    spec = make_spec(student={"train": {"epochs": 1, "batch_size": 2, "num_processes": 2}})
    missing = tmp_path / "no-teacher.pt"  # only the ranks look for it
    with pytest.raises(RuntimeError) as failed:
        run_stage(spec, "distill", tmp_path / "work", teacher_path=missing)
    message = str(failed.value)
    # Each rank's error, by rank, before accelerate's exit code and the end of its log.
    assert message.startswith(
        f"stage distill: rank 0: FileNotFoundError: teacher checkpoint {missing}: no such file"
    )
    assert f"rank 1: FileNotFoundError: teacher checkpoint {missing}" in message
    assert message.index("rank 1:") < message.index("`accelerate launch` on 2 processes exited")


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if text in (d / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(d.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_a_paused_multi_process_stage_resumes_to_the_unbroken_weights(
    make_spec, tmp_path: Path
) -> None:
    # batch 1 per process: 6 steps per epoch, 24 in all, so the pause lands well before the end
    spec = make_spec(student={"train": {"epochs": 4, "batch_size": 1, "num_processes": 2}})
    run_stage(spec, "student", tmp_path / "a")
    straight = _ranks(tmp_path / "a" / "student")

    events: list[Progress] = []
    pause = StageHooks(on_progress=events.append, should_pause=lambda: len(events) >= 2)
    with pytest.raises(StagePaused) as info:  # the ranks agree on a step
        run_stage(spec, "student", tmp_path / "b", hooks=pause)
    assert info.value.checkpoint_dir is not None and info.value.checkpoint_dir.name != "step-24"
    assert not (tmp_path / "b" / "student" / "result.json").exists()
    run_stage(spec, "student", tmp_path / "b")
    assert [r["state_hash"] for r in _ranks(tmp_path / "b" / "student")] == [
        straight[0]["state_hash"]
    ] * 2
