"""One `TermLoss` module per spec loss term, built by the `LOSSES` registry (key: the `kind`).

A builder is ``(term, ctx: TermContext) -> TermLoss``. A `TermLoss` maps
``(student: ModelOutput, target, teacher: ModelOutput | None)`` to an unweighted scalar and
owns whatever it learns (the 1x1 adapters of feature terms). Teacher outputs reach it detached.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distillery.losses.dist import dist_loss
from distillery.losses.entropy import confidence_penalty
from distillery.losses.features import (
    FeatureAdapter,
    attention_transfer,
    feature_mse,
    resize_to,
    valid_fraction,
)
from distillery.losses.kd import channel_wise_kd, logit_kd
from distillery.losses.output import ModelOutput
from distillery.losses.supervised import cross_entropy, focal_loss, ohem_loss
from distillery.models.base import SegmentationModel
from distillery.registry import Registry
from distillery.spec import (
    AttentionTransferTerm,
    ChannelWiseKDTerm,
    ConfidencePenaltyTerm,
    CrossEntropyTerm,
    DISTTerm,
    FeatureMSETerm,
    FocalTerm,
    LogitKDTerm,
    OhemTerm,
)


@dataclass(frozen=True)
class TermContext:
    """What a builder may read: the models (for tap channels), class weights, the ignore index,
    and the term's position in its list (for error messages)."""

    student: SegmentationModel
    teacher: SegmentationModel | None
    class_weights: Tensor | Mapping[str, Tensor] | None
    ignore_index: int
    index: int

    def where(self, kind: str) -> str:
        return f"loss term {self.index} ({kind})"

    def weights_for(self, kind: str, scheme: str) -> Tensor | None:
        """The class-weight vector a term asks for (`scheme` != "none"), checked against C."""
        if scheme == "none":
            return None
        weights = self.class_weights
        if isinstance(weights, Mapping):
            if scheme not in weights:
                raise ValueError(
                    f"{self.where(kind)}: class_weights={scheme!r} but the weights given are for "
                    f"{', '.join(sorted(weights)) or 'no scheme'}"
                )
            weights = weights[scheme]
        if weights is None:
            raise ValueError(
                f"{self.where(kind)}: class_weights={scheme!r} needs class weights; pass "
                f"class_weights (computed from the training set's label statistics)"
            )
        c = self.student.num_classes
        if weights.shape != (c,):
            raise ValueError(
                f"{self.where(kind)}: class weights must have shape ({c},) for {c} classes, "
                f"got {tuple(weights.shape)}"
            )
        return weights.detach().float().clone()

    def teacher_model(self, kind: str) -> SegmentationModel:
        if self.teacher is None:
            raise ValueError(f"{self.where(kind)} is a distillation term and needs a teacher model")
        return self.teacher

    def channels(self, role: str, tap: str, kind: str, field: str) -> int:
        model = self.student if role == "student" else self.teacher_model(kind)
        try:
            return model.tap_channels(tap)
        except KeyError:
            raise KeyError(
                f"{self.where(kind)}: {field} {tap!r} is not a tap of the {role} model "
                f"({type(model).__name__}); its taps: {', '.join(model.tap_names)}"
            ) from None


class TermLoss(nn.Module):
    """One loss term. `name` is its component name ("<kind>" or "<kind>/<tap>")."""

    kind: str
    needs_teacher: bool = False

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.student_taps: list[str] = []
        self.teacher_taps: list[str] = []

    def forward(self, student: ModelOutput, target: Tensor, teacher: ModelOutput | None) -> Tensor:
        raise NotImplementedError


def _target_at(target: Tensor, size: torch.Size) -> Tensor:
    """The label map at `size` (H, W) by nearest-neighbour resampling."""
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    resized = F.interpolate(target.unsqueeze(1).float(), size=tuple(size), mode="nearest")
    return resized.squeeze(1).to(target.dtype)


# ------------------------------------------------------------------------------------ supervised


class _Supervised(TermLoss):
    def __init__(
        self,
        name: str,
        fn: Callable[..., Tensor],
        class_weights: Tensor | None,
        ignore_index: int,
        **options: float,
    ) -> None:
        super().__init__(name)
        self.fn, self.ignore_index, self.options = fn, ignore_index, options
        #: Check label values (an error naming bad ones; reads back from the device).
        self.check_targets = True
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, student: ModelOutput, target: Tensor, teacher: ModelOutput | None) -> Tensor:
        return self.fn(
            student.logits,
            target,
            class_weights=self.class_weights,
            ignore_index=self.ignore_index,
            check_targets=self.check_targets,
            **self.options,
        )


LOSSES: Registry[Callable[..., TermLoss]] = Registry("loss")


@LOSSES.register("cross_entropy")
def build_cross_entropy(term: CrossEntropyTerm, ctx: TermContext) -> TermLoss:
    w = ctx.weights_for(term.kind, term.class_weights)
    return _Supervised(
        term.kind, cross_entropy, w, ctx.ignore_index, label_smoothing=term.label_smoothing
    )


@LOSSES.register("focal")
def build_focal(term: FocalTerm, ctx: TermContext) -> TermLoss:
    w = ctx.weights_for(term.kind, getattr(term, "class_weights", "none"))
    return _Supervised(term.kind, focal_loss, w, ctx.ignore_index, gamma=term.gamma)


@LOSSES.register("ohem")
def build_ohem(term: OhemTerm, ctx: TermContext) -> TermLoss:
    w = ctx.weights_for(term.kind, getattr(term, "class_weights", "none"))
    return _Supervised(
        term.kind,
        ohem_loss,
        w,
        ctx.ignore_index,
        threshold=term.threshold,
        min_kept_fraction=term.min_kept_fraction,
    )


class _ConfidencePenalty(TermLoss):
    def __init__(self, name: str, ignore_index: int) -> None:
        super().__init__(name)
        self.ignore_index = ignore_index

    def forward(self, student: ModelOutput, target: Tensor, teacher: ModelOutput | None) -> Tensor:
        return confidence_penalty(student.logits, target, self.ignore_index)


@LOSSES.register("confidence_penalty")
def build_confidence_penalty(term: ConfidencePenaltyTerm, ctx: TermContext) -> TermLoss:
    return _ConfidencePenalty(term.kind, ctx.ignore_index)


# ---------------------------------------------------------------------------------- distillation


def _same_classes(ctx: TermContext, kind: str) -> None:
    teacher = ctx.teacher_model(kind)
    if teacher.num_classes != ctx.student.num_classes:
        raise ValueError(
            f"{ctx.where(kind)}: student has {ctx.student.num_classes} classes, teacher "
            f"{teacher.num_classes}; logit distillation needs the same classes"
        )


class _LogitKD(TermLoss):
    needs_teacher = True

    def __init__(self, name: str, temperature: float, ignore_index: int) -> None:
        super().__init__(name)
        self.temperature, self.ignore_index = temperature, ignore_index

    def forward(self, student: ModelOutput, target: Tensor, teacher: ModelOutput | None) -> Tensor:
        assert teacher is not None
        size = teacher.logits.shape[-2:]
        return logit_kd(
            resize_to(student.logits.float(), size),
            teacher.logits,
            self.temperature,
            target=_target_at(target, size),
            ignore_index=self.ignore_index,
        )


@LOSSES.register("logit_kd")
def build_logit_kd(term: LogitKDTerm, ctx: TermContext) -> TermLoss:
    _same_classes(ctx, term.kind)
    return _LogitKD(term.kind, term.temperature, ctx.ignore_index)


class _DIST(TermLoss):
    needs_teacher = True

    def __init__(self, name: str, term: DISTTerm, ignore_index: int) -> None:
        super().__init__(name)
        self.temperature, self.beta, self.gamma = term.temperature, term.beta, term.gamma
        self.ignore_index = ignore_index

    def forward(self, student: ModelOutput, target: Tensor, teacher: ModelOutput | None) -> Tensor:
        assert teacher is not None
        size = teacher.logits.shape[-2:]
        return dist_loss(
            resize_to(student.logits.float(), size),
            teacher.logits,
            self.temperature,
            self.beta,
            self.gamma,
            target=_target_at(target, size),
            ignore_index=self.ignore_index,
        )


@LOSSES.register("dist")
def build_dist(term: DISTTerm, ctx: TermContext) -> TermLoss:
    _same_classes(ctx, term.kind)
    return _DIST(term.kind, term, ctx.ignore_index)


class _ChannelWiseKD(TermLoss):
    """CWD on the logits or on a feature tap (student features through a 1x1 adapter to the
    teacher's channels, resized to its size); either way positions whose (nearest) label is
    ignored, the padded crop border included, are left out of the spatial softmax."""

    needs_teacher = True

    def __init__(
        self,
        name: str,
        tap: str,
        temperature: float,
        ignore_index: int,
        adapter: FeatureAdapter | None,
    ) -> None:
        super().__init__(name)
        self.tap, self.temperature, self.ignore_index = tap, temperature, ignore_index
        self.adapter = adapter
        if tap != "logits":
            self.student_taps, self.teacher_taps = [tap], [tap]

    def forward(self, student: ModelOutput, target: Tensor, teacher: ModelOutput | None) -> Tensor:
        assert teacher is not None
        t = teacher.tap(self.tap, "teacher")
        s = student.tap(self.tap, "student")
        size = t.shape[-2:]
        mask = _target_at(target, size) != self.ignore_index
        if self.adapter is not None:
            s = self.adapter(s.float(), size)
        return channel_wise_kd(resize_to(s.float(), size), t, self.temperature, mask=mask)


@LOSSES.register("channel_wise_kd")
def build_channel_wise_kd(term: ChannelWiseKDTerm, ctx: TermContext) -> TermLoss:
    if term.tap == "logits":
        _same_classes(ctx, term.kind)
        return _ChannelWiseKD(term.kind, "logits", term.temperature, ctx.ignore_index, None)
    cs = ctx.channels("student", term.tap, term.kind, "tap")
    ct = ctx.channels("teacher", term.tap, term.kind, "tap")
    return _ChannelWiseKD(
        f"{term.kind}/{term.tap}",
        term.tap,
        term.temperature,
        ctx.ignore_index,
        FeatureAdapter(cs, ct),
    )


def _pair_name(kind: str, student_tap: str, teacher_tap: str) -> str:
    if student_tap == teacher_tap:
        return f"{kind}/{student_tap}"
    return f"{kind}/{student_tap}->{teacher_tap}"


class _FeaturePair(TermLoss):
    """A loss between the student's map at one tap and the teacher's at another; each cell of
    the teacher's map is weighted by its fraction of labelled pixels (`valid_fraction`)."""

    needs_teacher = True

    def __init__(self, name: str, student_tap: str, teacher_tap: str, ignore_index: int) -> None:
        super().__init__(name)
        self.student_tap, self.teacher_tap = student_tap, teacher_tap
        self.ignore_index = ignore_index
        self.student_taps = [student_tap] if student_tap != "logits" else []
        self.teacher_taps = [teacher_tap] if teacher_tap != "logits" else []

    def maps(self, student: ModelOutput, teacher: ModelOutput | None) -> tuple[Tensor, Tensor]:
        assert teacher is not None
        return student.tap(self.student_tap, "student"), teacher.tap(self.teacher_tap, "teacher")

    def weight(self, target: Tensor, feature: Tensor) -> Tensor:
        return valid_fraction(target, feature.shape[-2:], self.ignore_index)


class _FeatureMSE(_FeaturePair):
    def __init__(
        self,
        name: str,
        student_tap: str,
        teacher_tap: str,
        ignore_index: int,
        adapter: FeatureAdapter,
    ) -> None:
        super().__init__(name, student_tap, teacher_tap, ignore_index)
        self.adapter = adapter

    def forward(self, student: ModelOutput, target: Tensor, teacher: ModelOutput | None) -> Tensor:
        s, t = self.maps(student, teacher)
        return feature_mse(self.adapter(s.float(), t.shape[-2:]), t, self.weight(target, t))


@LOSSES.register("feature_mse")
def build_feature_mse(term: FeatureMSETerm, ctx: TermContext) -> TermLoss:
    cs = ctx.channels("student", term.student_tap, term.kind, "student_tap")
    ct = ctx.channels("teacher", term.teacher_tap, term.kind, "teacher_tap")
    name = _pair_name(term.kind, term.student_tap, term.teacher_tap)
    adapter = FeatureAdapter(cs, ct)
    return _FeatureMSE(name, term.student_tap, term.teacher_tap, ctx.ignore_index, adapter)


class _AttentionTransfer(_FeaturePair):
    def forward(self, student: ModelOutput, target: Tensor, teacher: ModelOutput | None) -> Tensor:
        s, t = self.maps(student, teacher)
        return attention_transfer(s, t, self.weight(target, t))


@LOSSES.register("attention_transfer")
def build_attention_transfer(term: AttentionTransferTerm, ctx: TermContext) -> TermLoss:
    ctx.channels("student", term.student_tap, term.kind, "student_tap")
    ctx.channels("teacher", term.teacher_tap, term.kind, "teacher_tap")
    name = _pair_name(term.kind, term.student_tap, term.teacher_tap)
    return _AttentionTransfer(name, term.student_tap, term.teacher_tap, ctx.ignore_index)
