"""What a stage trains, resolved from the spec (and checked before anything is built)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from distillery.spec import SUPERVISED_KINDS, AlternateSpec, ExperimentSpec, ModelSpec, TrainSpec

TRAIN_STAGES = ("teacher", "student", "distill")


@dataclass
class StagePlan:
    """What a stage trains, resolved from the spec."""

    stage: str
    train: TrainSpec
    #: The exported model's spec (the teacher for `teacher`, the student otherwise).
    model: ModelSpec
    losses: list[Any]
    #: distill only: "offline" or "online", the teacher's own terms (online), alternation.
    mode: str | None = None
    teacher_losses: list[Any] = field(default_factory=list)
    alternate: AlternateSpec | None = None

    @property
    def online(self) -> bool:
        return self.mode == "online"


def plan_stage(spec: ExperimentSpec, stage: str) -> StagePlan:
    if stage not in TRAIN_STAGES:
        raise ValueError(f"stage {stage!r} is not a training stage; use one of {TRAIN_STAGES}")
    if stage == "teacher":
        return StagePlan(stage, spec.teacher.train, spec.teacher.model, list(spec.teacher.losses))
    if spec.student.model.width == "auto":
        raise ValueError(
            "student.model.width is 'auto': the size stage resolves it "
            "(spec.with_student_width(width)) before the student is trained"
        )
    if stage == "student":
        return StagePlan(stage, spec.student.train, spec.student.model, list(spec.student.losses))
    d = spec.distillation
    if d.mode == "online" and not d.teacher_losses:
        raise ValueError(
            "distillation.teacher_losses: online distillation needs the teacher's terms"
        )
    if (
        d.alternate
        and d.alternate.between == "objectives"
        and not any(t.kind in SUPERVISED_KINDS for t in d.losses)
    ):
        raise ValueError(
            "distillation.alternate.between=objectives alternates supervised and "
            "distillation terms: distillation.losses has no supervised term"
        )
    return StagePlan(
        stage,
        spec.distill_train,
        spec.student.model,
        list(d.losses),
        mode=d.mode,
        teacher_losses=list(d.teacher_losses),
        alternate=d.alternate,
    )


def check_precision(train: TrainSpec) -> None:
    """fp16 autocast needs a GPU (accelerate refuses it on a CPU; bf16 works on both)."""
    import torch

    if train.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("train.mixed_precision: fp16 needs a CUDA GPU; use bf16 or no on a CPU")


def visible_gpus() -> int:
    """CUDA devices this process may use (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_processes(num_processes: int, visible_gpus: int) -> None:
    """One process per GPU: with CUDA, `num_processes` may not exceed the visible GPUs (it
    would fail late, with an invalid device ordinal); without CUDA, gloo processes share the
    CPU and any number is allowed."""
    if visible_gpus and num_processes > visible_gpus:
        import os

        mask = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f" (CUDA_VISIBLE_DEVICES={mask})" if mask is not None else ""
        raise ValueError(
            f"train.num_processes {num_processes} is more than the {visible_gpus} GPUs visible "
            f"here{where}; use at most {visible_gpus}, one process per GPU"
        )
