from __future__ import annotations

import pytest

from distillery.spec import DISTILL_KINDS, SUPERVISED_KINDS, AlternateSpec
from distillery.training.alternation import STUDENT, TEACHER, phase_at

BOTH = frozenset({STUDENT, TEACHER})


def test_no_alternation_updates_every_role_with_every_term() -> None:
    p = phase_at(None, BOTH, epoch=3, global_step=17)
    assert p.update == BOTH and p.kinds(STUDENT) is None and p.kinds(TEACHER) is None


def test_objectives_every_two_steps_start_supervised() -> None:
    alt = AlternateSpec(between="objectives", every=2, unit="steps")
    kinds = [
        phase_at(alt, frozenset({STUDENT}), epoch=1, global_step=s).kinds(STUDENT) for s in range(6)
    ]
    assert kinds == [SUPERVISED_KINDS] * 2 + [DISTILL_KINDS] * 2 + [SUPERVISED_KINDS] * 2
    # the teacher's objective (online) never alternates
    assert phase_at(alt, BOTH, epoch=1, global_step=2).kinds(TEACHER) is None


def test_objectives_by_epoch_ignore_the_step() -> None:
    alt = AlternateSpec(between="objectives", every=1, unit="epochs")
    assert phase_at(alt, BOTH, epoch=1, global_step=99).kinds(STUDENT) == SUPERVISED_KINDS
    assert phase_at(alt, BOTH, epoch=2, global_step=0).kinds(STUDENT) == DISTILL_KINDS


def test_models_take_turns_student_first() -> None:
    alt = AlternateSpec(between="models", every=3, unit="steps")
    turns = [next(iter(phase_at(alt, BOTH, epoch=1, global_step=s).update)) for s in range(7)]
    assert turns == [STUDENT] * 3 + [TEACHER] * 3 + [STUDENT]


def test_models_need_an_online_teacher() -> None:
    alt = AlternateSpec(between="models")
    with pytest.raises(ValueError, match="online"):
        phase_at(alt, frozenset({STUDENT}), epoch=1, global_step=0)
