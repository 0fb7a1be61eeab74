"""Alternating schedules of distillation (`spec.distillation.alternate`).

The schedule is cut into blocks of `every` optimizer steps (or epochs); even blocks (0, 2, ...)
run the first phase, odd blocks the second:

- ``between: objectives``: the student optimises its supervised terms (`SUPERVISED_KINDS`), then
  its distillation terms (`DISTILL_KINDS`). Supervised blocks skip the frozen teacher's forward.
- ``between: models`` (online): only the student is updated, then only the teacher; the model
  not being updated serves as a frozen reference (eval mode, inference mode) for that block.
"""

from __future__ import annotations

from dataclasses import dataclass

from distillery.spec import DISTILL_KINDS, SUPERVISED_KINDS, AlternateSpec

STUDENT, TEACHER = "student", "teacher"


@dataclass(frozen=True)
class Phase:
    """What one optimizer step trains: the roles that are updated and, per role, the loss kinds
    to compute (None: all of that role's terms)."""

    update: frozenset[str]
    student_kinds: frozenset[str] | None = None

    def kinds(self, role: str) -> set[str] | None:
        if role == STUDENT and self.student_kinds is not None:
            return set(self.student_kinds)
        return None


def block_index(alternate: AlternateSpec, *, epoch: int, global_step: int) -> int:
    """Index of the block that holds this step (`epoch` 1-based, `global_step` 0-based)."""
    unit_index = global_step if alternate.unit == "steps" else epoch - 1
    return unit_index // alternate.every


def phase_at(
    alternate: AlternateSpec | None, roles: frozenset[str], *, epoch: int, global_step: int
) -> Phase:
    """The phase of the optimizer step `global_step` (0-based) in `epoch` (1-based); `roles` are
    the trainable roles of the stage ({"student"}, or {"student", "teacher"} online)."""
    if alternate is None:
        return Phase(update=roles)
    second = block_index(alternate, epoch=epoch, global_step=global_step) % 2 == 1
    if alternate.between == "objectives":
        kinds = DISTILL_KINDS if second else SUPERVISED_KINDS
        return Phase(update=roles, student_kinds=frozenset(kinds))
    if TEACHER not in roles:
        raise ValueError("alternate.between=models needs distillation.mode=online")
    return Phase(update=frozenset({TEACHER if second else STUDENT}))


def updates_per_role(
    alternate: AlternateSpec | None,
    roles: frozenset[str],
    epochs: int,
    steps_per_epoch: int,
    total_steps: int | None = None,
) -> dict[str, int]:
    """How many optimizer steps update each role over the whole run (its schedule's length);
    `total_steps` (iteration-based training) ends the run inside its last epoch."""
    counts = dict.fromkeys(roles, 0)
    for epoch in range(1, epochs + 1):
        for s in range(steps_per_epoch):
            step = (epoch - 1) * steps_per_epoch + s
            if total_steps is not None and step >= total_steps:
                break
            for role in phase_at(alternate, roles, epoch=epoch, global_step=step).update:
                counts[role] += 1
    return counts
