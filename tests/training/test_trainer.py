"""Training stages end to end on a tiny synthetic set (width 4, depth 2, 32x64, 3 steps/epoch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distillery.models.checkpoint import load_model_checkpoint
from distillery.training import (
    Progress,
    StageCancelled,
    StageDiverged,
    StageHooks,
    StagePaused,
    run_stage,
)
from distillery.training.checkpoints import STATE_FILE


def _weights(path: Path) -> dict[str, torch.Tensor]:
    model, _ = load_model_checkpoint(path)
    return model.state_dict()


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=k)


class StopAt:
    """`should_stop` that answers True from its n-th call on (one call per step)."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls >= self.n


def test_teacher_stage_trains_checkpoints_and_exports(make_spec, tmp_path: Path) -> None:
    spec = make_spec(teacher={"train": {"epochs": 3}})
    events: list[Progress] = []
    saved: list[tuple[int, Path]] = []
    hooks = StageHooks(on_progress=events.append, on_checkpoint=lambda n, d: saved.append((n, d)))
    result = run_stage(spec, "teacher", tmp_path, hooks=hooks)

    steps = [p for p in events if p.kind == "step"]
    ends = [p for p in events if p.kind == "epoch"]
    assert [(p.epoch, p.step, p.steps) for p in steps] == [
        (e, s, 3) for e in (1, 2, 3) for s in (1, 2, 3)
    ]
    assert {"loss", "loss/cross_entropy", "lr", "images_per_s"} <= steps[0].metrics.keys()
    assert [p.epoch for p in ends] == [1, 2, 3]
    assert steps[-1].metrics["lr"] < steps[0].metrics["lr"]  # poly decay

    stage_dir = tmp_path / "teacher"
    assert [e for e, _ in saved] == [3, 6, 9]  # global steps at the epoch ends
    assert saved[-1][1] == stage_dir / "ckpt" / "step-9" == result.checkpoint_dir
    kept = sorted(p.name for p in (stage_dir / "ckpt").iterdir())
    assert kept == ["step-6", "step-9"]  # the newest two
    assert (result.checkpoint_dir / STATE_FILE).is_file()

    m = result.metrics
    assert 0 <= m["miou"] <= 1 and 0 <= m["pixel_accuracy"] <= 1
    assert len(m["iou"]) == 19 and "road" in m["iou"]
    assert m["teacher_entropy"] == m["entropy"] > 0
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.history[-1]["miou"] == m["miou"] == ends[-1].metrics["miou"]
    model, model_spec = load_model_checkpoint(result.model_path)
    assert result.model_path == stage_dir / "model.pt"
    assert model_spec.width == 4 and result.params == sum(p.numel() for p in model.parameters())
    assert result.wandb_run is None

    # a finished stage is not trained again
    again: list[Progress] = []
    assert (
        run_stage(spec, "teacher", tmp_path, hooks=StageHooks(on_progress=again.append)) == result
    )
    assert again == []


def test_resumed_run_ends_with_the_weights_of_an_unbroken_run(make_spec, tmp_path: Path) -> None:
    spec = make_spec()
    straight = run_stage(spec, "student", tmp_path / "a")

    stop = StopAt(5)  # epoch 1 is steps 1-3; stop during epoch 2
    with pytest.raises(StageCancelled) as info:
        run_stage(spec, "student", tmp_path / "b", hooks=StageHooks(should_stop=stop))
    ckpt_root = tmp_path / "b" / "student" / "ckpt"
    assert info.value.epoch == 2 and info.value.checkpoint_dir == ckpt_root / "step-3"
    assert sorted(p.name for p in ckpt_root.iterdir()) == ["step-3"]
    assert not (tmp_path / "b" / "student" / "result.json").exists()

    events: list[Progress] = []
    resumed = run_stage(
        spec, "student", tmp_path / "b", hooks=StageHooks(on_progress=events.append)
    )
    assert {p.epoch for p in events} == {2}  # epoch 1 was not trained again
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert resumed.history[0] == straight.history[0] | {"train": resumed.history[0]["train"]}
    _assert_same_weights(straight.model_path, resumed.model_path)
    assert resumed.metrics["miou"] == pytest.approx(straight.metrics["miou"])


def test_resume_false_starts_over(make_spec, tmp_path: Path) -> None:
    spec = make_spec(student={"train": {"epochs": 1}})
    first = run_stage(spec, "student", tmp_path)
    (tmp_path / "student" / "stale.txt").write_text("x")
    events: list[Progress] = []
    second = run_stage(
        spec, "student", tmp_path, resume=False, hooks=StageHooks(on_progress=events.append)
    )
    assert len(events) == 4 and not (tmp_path / "student" / "stale.txt").exists()
    _assert_same_weights(first.model_path, second.model_path)  # same seed, same run


def test_offline_distillation_keeps_the_teacher_frozen(
    make_spec, teacher_model: Path, tmp_path: Path
) -> None:
    spec = make_spec(
        distillation={
            "losses": [
                {"kind": "cross_entropy"},
                {"kind": "logit_kd", "temperature": 2.0},
                {"kind": "feature_mse", "student_tap": "bottleneck", "teacher_tap": "bottleneck"},
            ]
        }
    )
    before = _weights(teacher_model)
    events: list[Progress] = []
    result = run_stage(
        spec,
        "distill",
        tmp_path,
        teacher_path=teacher_model,
        hooks=StageHooks(on_progress=events.append),
    )
    step = next(p for p in events if p.kind == "step")
    assert {
        "loss/cross_entropy",
        "loss/logit_kd",
        "loss/feature_mse/bottleneck",
    } <= step.metrics.keys()
    assert step.metrics["loss/logit_kd"] > 0
    for k, v in _weights(teacher_model).items():
        assert torch.equal(v, before[k]), k
    m = result.metrics
    assert m["teacher_entropy"] > 0 and 0 <= m["teacher_miou"] <= 1 and "teacher_iou" in m
    assert _weights(result.model_path).keys() == _weights(tmp_path / "distill" / "model.pt").keys()
    assert load_model_checkpoint(result.model_path)[1].width == 4  # the student is exported
    # the feature adapter is saved with the accelerate state
    assert (result.checkpoint_dir / "custom_checkpoint_0.pkl").is_file()


def test_offline_distillation_needs_a_teacher(make_spec, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="teacher_path"):
        run_stage(make_spec(), "distill", tmp_path)


def test_online_distillation_trains_both_models(
    make_spec, teacher_model: Path, tmp_path: Path
) -> None:
    spec = make_spec(distillation={"mode": "online"})
    events: list[Progress] = []
    result = run_stage(
        spec,
        "distill",
        tmp_path,
        teacher_path=teacher_model,
        hooks=StageHooks(on_progress=events.append),
    )
    step = next(p for p in events if p.kind == "step")
    assert {
        "loss/logit_kd",
        "teacher_loss/cross_entropy",
        "teacher_loss/logit_kd",
    } <= step.metrics.keys()
    assert "teacher_lr" in step.metrics
    trained_teacher = result.extra_models["teacher"]
    changed = [
        k
        for k, v in _weights(trained_teacher).items()
        if not torch.equal(v, _weights(teacher_model)[k])
    ]
    assert changed  # the teacher learned too
    assert "teacher_miou" in result.metrics and "teacher_entropy" in result.metrics


def test_alternating_models_leaves_the_teacher_alone_in_the_student_turn(
    make_spec, teacher_model: Path, tmp_path: Path
) -> None:
    spec = make_spec(
        student={"train": {"epochs": 1}},
        distillation={
            "mode": "online",
            "alternate": {"between": "models", "every": 1, "unit": "epochs"},
        },
    )
    events: list[Progress] = []
    result = run_stage(
        spec,
        "distill",
        tmp_path,
        teacher_path=teacher_model,
        hooks=StageHooks(on_progress=events.append),
    )
    steps = [p for p in events if p.kind == "step"]
    assert all("loss" in p.metrics and "teacher_loss" not in p.metrics for p in steps)
    before = _weights(teacher_model)
    for k, v in _weights(result.extra_models["teacher"]).items():  # BN statistics included
        assert torch.equal(v, before[k]), k


def test_alternating_objectives_start_with_the_supervised_terms(
    make_spec, teacher_model: Path, tmp_path: Path
) -> None:
    spec = make_spec(
        distillation={"alternate": {"between": "objectives", "every": 2, "unit": "steps"}}
    )
    events: list[Progress] = []
    run_stage(
        spec,
        "distill",
        tmp_path,
        teacher_path=teacher_model,
        hooks=StageHooks(on_progress=events.append),
    )
    kinds = [
        tuple(sorted(k.split("/")[1] for k in p.metrics if k.startswith("loss/")))
        for p in events
        if p.kind == "step"
    ]
    sup, kd = ("cross_entropy",), ("logit_kd",)
    assert kinds == [sup, sup, kd, kd, sup, sup]


def test_gradient_accumulation_and_class_weights(make_spec, tmp_path: Path) -> None:
    spec = make_spec(
        student={
            "train": {"epochs": 1, "grad_accum_steps": 2, "grad_clip_norm": 1.0},
            "losses": [{"kind": "cross_entropy", "class_weights": "median_frequency"}],
        }
    )
    events: list[Progress] = []
    result = run_stage(spec, "student", tmp_path, hooks=StageHooks(on_progress=events.append))
    steps = [p for p in events if p.kind == "step"]
    assert [(p.step, p.steps) for p in steps] == [(1, 2), (2, 2)]  # 3 batches: 2 + 1
    cache = json.loads((tmp_path / "class_weights.json").read_text())
    weights = cache["weights"]["median_frequency"]
    assert len(weights) == 19 and max(weights) > 0
    assert result.history[0]["global_step"] == 2


def test_bf16_mixed_precision_runs_on_cpu(make_spec, tmp_path: Path) -> None:
    spec = make_spec(
        student={"train": {"epochs": 1, "mixed_precision": "bf16", "max_steps_per_epoch": 1}}
    )
    result = run_stage(spec, "student", tmp_path)
    assert result.history[0]["global_step"] == 1
    assert torch.isfinite(torch.tensor(result.history[0]["train"]["loss"]))


def test_val_metrics_cover_every_val_image(make_spec, tmp_path: Path) -> None:
    from distillery.data import build_datasets

    spec = make_spec(student={"train": {"epochs": 1, "max_steps_per_epoch": 1}})
    result = run_stage(spec, "student", tmp_path)
    _, val = build_datasets(spec.data)
    assert len(val) == 6
    pixels = sum(int((val[i]["mask"] != 255).sum()) for i in range(len(val)))
    iou = [v for v in result.metrics["iou"].values() if v is not None]
    assert iou and result.metrics["miou"] == pytest.approx(sum(iou) / len(iou))
    assert pixels > 0


def test_a_paused_stage_resumes_mid_epoch_to_the_weights_of_an_unbroken_run(
    make_spec, tmp_path: Path
) -> None:
    spec = make_spec()
    straight = run_stage(spec, "student", tmp_path / "a")

    pause = StopAt(5)  # before step 5: epoch 2 has done 1 of its 3 steps (global step 4)
    with pytest.raises(StagePaused) as info:
        run_stage(spec, "student", tmp_path / "b", hooks=StageHooks(should_pause=pause))
    ckpt_root = tmp_path / "b" / "student" / "ckpt"
    assert info.value.checkpoint_dir == ckpt_root / "step-4" and info.value.step == 1
    state = json.loads((ckpt_root / "step-4" / STATE_FILE).read_text())
    assert (state["epoch"], state["global_step"], state["epoch_step"]) == (1, 4, 1)

    events: list[Progress] = []
    resumed = run_stage(
        spec, "student", tmp_path / "b", hooks=StageHooks(on_progress=events.append)
    )
    assert [(p.epoch, p.step) for p in events if p.kind == "step"] == [(2, 2), (2, 3)]
    _assert_same_weights(straight.model_path, resumed.model_path)
    assert resumed.metrics["miou"] == pytest.approx(straight.metrics["miou"])


def test_a_diverging_stage_fails_with_the_step_and_keeps_the_last_good_checkpoint(
    make_spec, tmp_path: Path
) -> None:
    spec = make_spec(  # lr and loss weights are bounded (10, 1000); together they blow up
        student={
            "train": {"epochs": 3, "lr": 10.0, "optimizer": "sgd"},
            "losses": [{"kind": "cross_entropy", "weight": 1000.0}],
        }
    )
    with pytest.raises(StageDiverged) as info:
        run_stage(spec, "student", tmp_path)
    assert str(info.value).startswith(f"diverged at step {info.value.step} (loss=")
    assert info.value.step >= 1
    from safetensors.torch import load_file

    for d in (tmp_path / "student" / "ckpt").glob("step-*"):
        assert int(d.name.split("-")[1]) < info.value.step  # only checkpoints from before
        for name, tensor in load_file(d / "model.safetensors").items():
            assert torch.isfinite(tensor).all(), (d.name, name)  # nothing non-finite was saved
    assert not (tmp_path / "student" / "result.json").exists()
