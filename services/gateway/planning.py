"""The gateway's experiment rules: submission checks, cancel, delete, status roll-up.

Stages of one experiment run strictly in order (`position`): at submission only the first is
enqueued; the worker that finishes a stage enqueues the next.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from distillery.db import Dataset, Experiment, Stage, StageStatus, User
from distillery.db import planning as db_planning
from distillery.db.models import utcnow
from distillery.settings import Settings
from distillery.spec import ExperimentSpec
from services.dispatch import Dispatcher, enqueue_stage


class PlanError(ValueError):
    """A spec the gateway cannot run; `errors` are FastAPI-style `{loc, msg, type}` dicts."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))
        self.errors = errors


class Conflict(ValueError):
    """The experiment is in a state that forbids the request (HTTP 409)."""


def dataset_errors(session: Session, spec: ExperimentSpec) -> list[dict[str, Any]]:
    """Every `dataset_id` must name a `ready` dataset of the same format."""
    errors = []
    for side in ("train", "val"):
        for i, ref in enumerate(getattr(spec.data, side)):
            if ref.dataset_id is None:
                continue
            loc = ["body", "data", side, i]
            ds = session.get(Dataset, ref.dataset_id)
            if ds is None:
                errors.append(_err(loc + ["dataset_id"], f"no dataset {ref.dataset_id!r}"))
            elif ds.status != "ready":
                errors.append(
                    _err(
                        loc + ["dataset_id"],
                        f"dataset {ref.dataset_id!r} ({ds.name}) is {ds.status}, not ready",
                    )
                )
            elif ds.format != ref.format:
                errors.append(
                    _err(
                        loc + ["format"],
                        f"dataset {ref.dataset_id!r} is {ds.format}, not {ref.format}",
                    )
                )
    return errors


def _err(loc: list[Any], msg: str, type_: str = "value_error") -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": type_}


def create_experiment(
    session: Session,
    spec: ExperimentSpec,
    owner: User,
    settings: Settings,
    dispatcher: Dispatcher,
) -> Experiment:
    """Check dataset references, store the spec and its planned stages (the same planning as
    `distillery run`: `distillery.db.planning`), commit, then enqueue the first stage."""
    errors = dataset_errors(session, spec)
    if not spec.planned_stages():
        errors.append(
            _err(
                ["body", "stages"],
                "nothing to run: the only stage is a teacher given as a checkpoint",
            )
        )
    if errors:
        raise PlanError(errors)
    experiment = db_planning.create_experiment(
        session,
        spec,
        owner_id=owner.id,
        gpu_queue=settings.gpu_queue,
        profiler_queue=settings.profiler_queue,
    )
    session.commit()
    enqueue_stage(session, dispatcher, experiment.stages[0])
    return experiment


def cancel_experiment(session: Session, experiment_id: str) -> Experiment:
    """Request cancellation: queued stages are cancelled now; a running stage stops at its next
    step (the worker reads `cancel_requested`) and the worker then marks the experiment."""
    experiment = session.get(
        Experiment, experiment_id, with_for_update=True, populate_existing=True
    )
    if experiment is None:
        raise LookupError(experiment_id)
    if experiment.status.finished:
        raise Conflict(f"experiment {experiment_id} already {experiment.status.value}")
    experiment.cancel_requested = True
    now = utcnow()
    # A conditional UPDATE: a worker that has just claimed a stage (queued -> running) wins.
    session.execute(
        update(Stage)
        .where(Stage.experiment_id == experiment_id, Stage.status == StageStatus.queued)
        .values(status=StageStatus.cancelled, finished_at=now, error="cancelled before it started")
        .execution_options(synchronize_session=False)
    )
    session.flush()
    stages = session.scalars(
        select(Stage).where(Stage.experiment_id == experiment_id).order_by(Stage.position)
    ).all()
    for s in stages:
        session.refresh(s)
    if not any(s.status == StageStatus.running for s in stages):
        experiment.status = StageStatus.cancelled
    session.commit()
    session.refresh(experiment)
    return experiment


def ensure_deletable(experiment: Experiment) -> None:
    """Only a finished or cancelled experiment with nothing running may be deleted."""
    if not experiment.status.finished or any(
        s.status == StageStatus.running for s in experiment.stages
    ):
        raise Conflict(
            f"experiment {experiment.id} is {experiment.status.value}: cancel it and wait until "
            "nothing runs before deleting it"
        )


def artifacts_prefix(experiment_id: str) -> str:
    """Where a run's checkpoints, results and reports live in the artifacts bucket."""
    return f"artifacts/{experiment_id}/"
