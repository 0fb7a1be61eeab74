"""What a stage trains, resolved from the spec (and checked before anything is built)."""

from __future__ import annotations

from collections.abc import Iterable
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


def reads_logits(terms: Iterable[Any]) -> bool:
    """True if some term's loss depends on the trained model's logits (so every parameter gets
    a gradient; otherwise DDP must look for unused parameters)."""
    for t in terms:
        if t.kind in SUPERVISED_KINDS or t.kind in ("logit_kd", "dist"):
            return True
        if getattr(t, "tap", None) == "logits" or getattr(t, "student_tap", None) == "logits":
            return True
    return False
