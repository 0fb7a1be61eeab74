"""`/experiments/{id}/shares`: the owner lets other users build on an experiment's artifacts.

A user an experiment is shared with may name its artifacts in a spec
(`teacher.model.checkpoint: artifacts/<id>/teacher/model.pt`); `distillery.access` checks it at
submission and again on the worker, so taking a share back stops stages that have not started.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from distillery.db import Experiment, ExperimentShare, User
from services.gateway.deps import CurrentUser, ReadDep, SessionDep, ensure_owner_or_admin
from services.gateway.schemas import SharesOut

router = APIRouter(prefix="/experiments/{experiment_id}/shares", tags=["experiments"])


def _experiment(session: Session, experiment_id: str) -> Experiment:
    experiment = session.get(Experiment, experiment_id)
    if experiment is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no experiment {experiment_id!r}")
    return experiment


def _user(session: Session, name: str) -> User:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no user {name!r}")
    return user


def _shares(session: Session, experiment_id: str) -> SharesOut:
    names = session.scalars(
        select(User.name)
        .join(ExperimentShare, ExperimentShare.user_id == User.id)
        .where(ExperimentShare.experiment_id == experiment_id)
        .order_by(User.name)
    ).all()
    return SharesOut(experiment_id=experiment_id, users=list(names))


@router.get("", response_model=SharesOut)
def list_shares(experiment_id: str, read: ReadDep, user: CurrentUser) -> SharesOut:
    """The users this experiment is shared with (besides its owner and the admins)."""
    with read() as session:
        _experiment(session, experiment_id)
        return _shares(session, experiment_id)


@router.put("/{user_name}", response_model=SharesOut)
def share(experiment_id: str, user_name: str, session: SessionDep, user: CurrentUser) -> SharesOut:
    """Owner or admin: let `user_name` use this experiment's artifacts in their specs (sharing
    twice is the same as once)."""
    experiment = _experiment(session, experiment_id)
    ensure_owner_or_admin(user, experiment.owner_id, f"experiment {experiment_id}")
    target = _user(session, user_name)
    if session.get(ExperimentShare, (experiment_id, target.id)) is None:
        session.add(ExperimentShare(experiment_id=experiment_id, user_id=target.id))
        try:
            session.commit()
        except IntegrityError:  # the same share, made at the same moment by another request
            session.rollback()
    return _shares(session, experiment_id)


@router.delete("/{user_name}", response_model=SharesOut)
def unshare(
    experiment_id: str, user_name: str, session: SessionDep, user: CurrentUser
) -> SharesOut:
    """Owner or admin: take the share back; stages of `user_name` that have not started yet
    and name these artifacts then fail their access check."""
    experiment = _experiment(session, experiment_id)
    ensure_owner_or_admin(user, experiment.owner_id, f"experiment {experiment_id}")
    target = _user(session, user_name)
    session.execute(
        delete(ExperimentShare).where(
            ExperimentShare.experiment_id == experiment_id, ExperimentShare.user_id == target.id
        )
    )
    session.commit()
    return _shares(session, experiment_id)
