"""The training objective: a weighted sum of spec loss terms, each logged on its own.

``total = sum_k weight_k * loss_k`` over the (active) terms. The objective owns the terms'
learned parameters (1x1 adapters), so the optimizer takes ``objective.parameters()`` with the
student's. The teacher's output is always a constant (detached). For online (mutual) learning
build a second objective with the roles swapped: ``Objective(teacher_losses, student=teacher,
teacher=student)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import TypeAdapter
from torch import Tensor, nn

from distillery.losses._common import IGNORE_INDEX, no_autocast
from distillery.losses.output import ModelOutput
from distillery.losses.terms import LOSSES, TermContext, TermLoss
from distillery.models.base import SegmentationModel
from distillery.spec import DISTILL_KINDS, LossTerm

_TERM = TypeAdapter(LossTerm)


def _unique(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))


class Objective(nn.Module):
    """A weighted sum of loss terms for `student` (distillation terms read `teacher`)."""

    def __init__(
        self,
        terms: list[LossTerm],
        student: SegmentationModel,
        teacher: SegmentationModel | None = None,
        class_weights: Tensor | Mapping[str, Tensor] | None = None,
        ignore_index: int = IGNORE_INDEX,
        check_targets: bool = True,
    ) -> None:
        super().__init__()
        parsed: list[Any] = [t if hasattr(t, "kind") else _TERM.validate_python(t) for t in terms]
        if not parsed:
            raise ValueError("an objective needs at least one loss term")
        self.terms = parsed
        self.ignore_index = ignore_index
        losses: list[TermLoss] = []
        names: list[str] = []
        for i, term in enumerate(parsed):
            if term.kind in DISTILL_KINDS and teacher is None:
                raise ValueError(
                    f"loss term {i} ({term.kind}) is a distillation term and needs a teacher "
                    "model; give teacher= or move it out of this objective"
                )
            ctx = TermContext(student, teacher, class_weights, ignore_index, i)
            loss = LOSSES.get(term.kind)(term, ctx)
            name, n = loss.name, 2
            while name in names or name == "total":
                name, n = f"{loss.name}#{n}", n + 1
            loss.name = name
            if hasattr(loss, "check_targets"):
                loss.check_targets = check_targets
            names.append(name)
            losses.append(loss)
        self.losses = nn.ModuleList(losses)
        #: Component names in term order (the keys of `forward`'s dict, less "total").
        self.names = names
        #: Taps each model must expose (run it under FeatureTaps with these names).
        self.student_taps = _unique(t for loss in losses for t in loss.student_taps)
        self.teacher_taps = _unique(t for loss in losses for t in loss.teacher_taps)
        param = next(student.parameters(), None)
        if param is not None:
            self.to(param.device)

    @property
    def kinds(self) -> set[str]:
        return {t.kind for t in self.terms}

    def forward(
        self,
        student: ModelOutput,
        target: Tensor,
        teacher: ModelOutput | None = None,
        kinds: set[str] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """(total, components): ``total = sum weight_k * loss_k`` over the terms whose kind is in
        `kinds` (all if None); components maps each computed term's name to its detached,
        unweighted value, and "total" to the detached total. Computed in float32."""
        if kinds is not None:
            unknown = set(kinds) - set(LOSSES.names())
            if unknown:
                raise ValueError(
                    f"unknown loss kinds {sorted(unknown)}; known: {', '.join(LOSSES.names())}"
                )
        teacher = teacher.detach() if teacher is not None else None
        total: Tensor | None = None
        components: dict[str, Tensor] = {}
        with no_autocast(student.logits.device):
            for term, loss in zip(self.terms, self.losses, strict=True):
                if kinds is not None and term.kind not in kinds:
                    continue
                if loss.needs_teacher and teacher is None:
                    raise ValueError(
                        f"loss {loss.name!r} needs the teacher's output; pass teacher="
                    )
                value = loss(student, target, teacher)
                components[loss.name] = value.detach()
                weighted = term.weight * value
                total = weighted if total is None else total + weighted
            if total is None:  # no active term: a zero that still backpropagates
                total = student.logits.float().sum() * 0.0
        components["total"] = total.detach()
        return total, components

    def extra_repr(self) -> str:
        return ", ".join(f"{n}×{t.weight:g}" for n, t in zip(self.names, self.terms, strict=True))


def build_objective(
    terms: list[LossTerm],
    student: SegmentationModel,
    teacher: SegmentationModel | None = None,
    class_weights: Tensor | Mapping[str, Tensor] | None = None,
    ignore_index: int = IGNORE_INDEX,
    check_targets: bool = True,
) -> Objective:
    """The objective for `terms` (see `Objective`). `check_targets=False` skips the supervised
    terms' label-value check (a host-device sync), for targets checked when they were loaded."""
    return Objective(terms, student, teacher, class_weights, ignore_index, check_targets)
