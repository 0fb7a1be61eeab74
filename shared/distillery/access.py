"""What a spec may touch on the platform: folders and checkpoints (`distillery run` on a laptop
checks none of this).

- `data.*.root` (and so where `data.synthetic` writes) must lie inside one of the allowed folders
  (`Settings.allowed_data_roots`, `DISTILLERY_ALLOWED_DATA_ROOTS`; empty by default, so on the
  platform data come only from registered datasets, `dataset_id`).
- `teacher.model.checkpoint` must be an artifact of one of the submitter's own experiments, of
  an experiment its owner shared with the submitter (`ExperimentShare`, `PUT
  /experiments/{id}/shares/{user}`; an admin may use anyone's), or a file inside an allowed
  folder (a shared folder of checkpoints).

The gateway checks a spec at submission (422 naming the field); the worker checks it again
before a stage runs (the stage fails with the same message), where symbolic links are resolved
too. Checks are plain functions over a session, so both call the same code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sqlalchemy import select
from sqlalchemy.orm import Session

from distillery.db.models import Artifact, Experiment, ExperimentShare, User
from distillery.spec import ExperimentSpec, short


@dataclass(frozen=True)
class AccessError:
    """One thing a spec may not touch: `loc` is the spec's field path as a tuple."""

    loc: tuple[str | int, ...]
    msg: str

    @property
    def field(self) -> str:
        return ".".join(map(str, self.loc))


class SpecAccessDenied(ValueError):
    """Raised on the worker: a spec that reaches outside what its owner may use."""

    def __init__(self, errors: Sequence[AccessError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.msg}" for e in errors))
        self.errors = list(errors)


def inside(path: str, allowed_roots: Sequence[Path], *, resolve: bool = False) -> bool:
    """Whether `path` is absolute, free of `..`, and inside one of `allowed_roots`. With
    `resolve` (on the machine that will read it) symbolic links are followed first."""
    p = PurePosixPath(path)
    if not p.is_absolute() or ".." in p.parts:
        return False
    real = Path(os.path.realpath(path)) if resolve else Path(p)
    for root in allowed_roots:
        base = Path(os.path.realpath(root)) if resolve else Path(root)
        if real == base or real.is_relative_to(base):
            return True
    return False


def _roots_text(allowed_roots: Sequence[Path]) -> str:
    if not allowed_roots:
        return (
            "no local folders are allowed on this platform (DISTILLERY_ALLOWED_DATA_ROOTS is "
            "empty): register the dataset and give its dataset_id"
        )
    return "allowed folders: " + ", ".join(str(r) for r in allowed_roots)


def folder_errors(
    spec: ExperimentSpec, allowed_roots: Sequence[Path], *, resolve: bool = False
) -> list[AccessError]:
    """Every `data.train/val.<i>.root` outside the allowed folders (synthetic data is written
    into these roots, so this also bounds where `data.synthetic` writes)."""
    errors = []
    for side in ("train", "val"):
        for i, ref in enumerate(getattr(spec.data, side)):
            if ref.root is not None and not inside(ref.root, allowed_roots, resolve=resolve):
                what = "synthetic output" if spec.data.synthetic is not None else "data"
                errors.append(
                    AccessError(
                        ("data", side, i, "root"),
                        f"{what} folder {short(ref.root)} is not allowed here; "
                        + _roots_text(allowed_roots),
                    )
                )
    return errors


def experiment_of_key(key: str) -> str | None:
    """The experiment id of an artifact key `artifacts/<id>/...`, else None."""
    parts = PurePosixPath(key).parts
    if len(parts) >= 3 and parts[0] == "artifacts" and ".." not in parts:
        return parts[1]
    return None


def checkpoint_errors(
    session: Session,
    spec: ExperimentSpec,
    owner: User | None,
    allowed_roots: Sequence[Path],
    *,
    resolve: bool = False,
) -> list[AccessError]:
    """`teacher.model.checkpoint` (and `student.model.checkpoint`) must be an artifact of the
    owner's own experiment or one shared with them (any, for an admin) or a file inside an
    allowed folder."""
    errors = []
    for role in ("teacher", "student"):
        key = getattr(spec, role).model.checkpoint
        if key is None:
            continue
        loc = (role, "model", "checkpoint")
        if key.startswith("/"):
            if not inside(key, allowed_roots, resolve=resolve):
                errors.append(
                    AccessError(
                        loc,
                        f"checkpoint file {short(key)} is not allowed here; "
                        + _roots_text(allowed_roots),
                    )
                )
            continue
        experiment_id = experiment_of_key(key)
        query = (
            select(Experiment.owner_id)
            .join(Artifact, Artifact.experiment_id == Experiment.id)
            .where(Artifact.key == key, Experiment.id == experiment_id)
        )
        found = session.execute(query.limit(1)).first() if experiment_id else None
        if found is None:
            errors.append(
                AccessError(
                    loc,
                    f"no artifact {short(key)}: give the key of a model your experiments "
                    "produced (artifacts/<experiment id>/<stage>/model.pt)",
                )
            )
        elif not may_use(session, owner, experiment_id, found[0]):
            errors.append(
                AccessError(
                    loc,
                    f"artifact {short(key)} belongs to another user's experiment that is not "
                    "shared with you (its owner can: distillery share ID USER)",
                )
            )
    return errors


def may_use(
    session: Session, user: User | None, experiment_id: str, experiment_owner_id: int | None
) -> bool:
    """Whether `user` may build on the experiment's artifacts: its owner, an admin, or a user
    the owner shared it with."""
    if user is None:
        return False
    if user.is_admin or experiment_owner_id == user.id:
        return True
    shared = select(ExperimentShare.user_id).where(
        ExperimentShare.experiment_id == experiment_id, ExperimentShare.user_id == user.id
    )
    return session.execute(shared).first() is not None


def spec_access_errors(
    session: Session,
    spec: ExperimentSpec,
    owner: User | None,
    allowed_roots: Sequence[Path],
    *,
    resolve: bool = False,
) -> list[AccessError]:
    """Everything in `spec` that its owner may not touch on the platform (empty: all fine)."""
    return folder_errors(spec, allowed_roots, resolve=resolve) + checkpoint_errors(
        session, spec, owner, allowed_roots, resolve=resolve
    )


def check_experiment_access(
    session: Session, experiment_id: str, spec: ExperimentSpec, allowed_roots: Sequence[Path]
) -> None:
    """The worker's check before a stage runs: `SpecAccessDenied` naming every field."""
    experiment = session.get(Experiment, experiment_id)
    owner = session.get(User, experiment.owner_id) if experiment and experiment.owner_id else None
    errors = spec_access_errors(session, spec, owner, allowed_roots, resolve=True)
    if errors:
        raise SpecAccessDenied(errors)
