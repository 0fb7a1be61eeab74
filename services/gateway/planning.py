"""The gateway's experiment rules: submission checks and idempotency, cancel, retry, delete.

Stages of one experiment run strictly in order (`position`): at submission only the first is
enqueued; the worker that finishes a stage enqueues the next. Every change of a stage's status
goes through `distillery.stages.lifecycle`.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from distillery.access import spec_access_errors
from distillery.db import Dataset, Experiment, Stage, StageStatus, User
from distillery.settings import Settings
from distillery.spec import ExperimentSpec
from distillery.stages import keys, lifecycle
from distillery.stages.backoff import is_deadlock
from distillery.stages.plan import InsertedExperiment, insert_experiment, planned_kinds
from distillery.stages.sweep_plan import InsertedSweep, insert_sweep
from services.dispatch import Dispatcher, enqueue_stage, send_inserted

log = logging.getLogger(__name__)


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


def find_submission(session: Session, owner: User, idempotency_key: str) -> Experiment | None:
    """The experiment `owner` submitted with this `Idempotency-Key`, if any."""
    return session.scalar(
        select(Experiment).where(
            Experiment.owner_id == owner.id, Experiment.idempotency_key == idempotency_key
        )
    )


def create_experiment(
    session: Session,
    spec: ExperimentSpec,
    owner: User,
    settings: Settings,
    dispatcher: Dispatcher,
    idempotency_key: str | None = None,
) -> tuple[str, InsertedExperiment | InsertedSweep | None]:
    """Check dataset references, store the spec and its planned stages (the same planning as
    `distillery run`: `distillery.stages.plan`) with the first stage marked as sent, commit
    (one transaction), then send the first stage.

    Returns (experiment id, what was inserted); with an `idempotency_key` the owner already
    used, nothing is created: (that experiment's id, None)."""
    if idempotency_key is not None:
        existing = find_submission(session, owner, idempotency_key)
        if existing is not None:
            return existing.id, None
    errors = dataset_errors(session, spec) + [
        _err(["body", *e.loc], e.msg, "access_denied")
        for e in spec_access_errors(session, spec, owner, settings.allowed_data_roots)
    ]
    if spec.sweep is not None:
        return _create_sweep(session, spec, owner, settings, dispatcher, idempotency_key, errors)
    if not planned_kinds(spec):
        errors.append(
            _err(
                ["body", "stages"],
                "nothing to run: the only stage is a teacher given as a checkpoint",
            )
        )
    if errors:
        raise PlanError(errors)
    inserted, existing = _insert(session, insert_experiment, spec, owner, settings, idempotency_key)
    if inserted is None:
        return existing, None
    first = inserted.stages[0]
    send_inserted(session, dispatcher, first["id"], first["queue"])
    return inserted.experiment["id"], inserted


def _insert(
    session: Session,
    insert: Any,
    spec: ExperimentSpec,
    owner: User,
    settings: Settings,
    idempotency_key: str | None,
) -> tuple[Any, str]:
    """`insert` (`insert_experiment` or `insert_sweep`) and commit: ``(inserted, "")``, or
    ``(None, id)`` when the same idempotency key was submitted concurrently and the other
    request won."""
    try:
        inserted = insert(
            session,
            spec,
            owner_id=owner.id,
            queues={"gpu": settings.gpu_queue, "profiler": settings.profiler_queue},
            idempotency_key=idempotency_key,
        )
        session.commit()
    except IntegrityError:
        session.rollback()
        existing = find_submission(session, owner, idempotency_key) if idempotency_key else None
        if existing is None:
            raise
        return None, existing.id
    return inserted, ""


def _create_sweep(
    session: Session,
    spec: ExperimentSpec,
    owner: User,
    settings: Settings,
    dispatcher: Dispatcher,
    idempotency_key: str | None,
    errors: list[dict[str, Any]],
) -> tuple[str, InsertedSweep | None]:
    """`create_experiment` of a sweep: every child's spec is checked too (an override may name
    other data or checkpoints), then the parent and its members are inserted in one
    transaction (`distillery.stages.sweep_plan`) and the members that wait for nothing are
    sent."""
    from distillery.sweeps import plan_sweep

    for child in plan_sweep(spec).children:
        loc = ["body", "sweep", child.configuration]
        errors += [
            _err([*loc, *e.loc], e.msg, "access_denied")
            for e in spec_access_errors(session, child.spec, owner, settings.allowed_data_roots)
        ]
        errors += [{**e, "loc": [*loc, *e["loc"][1:]]} for e in dataset_errors(session, child.spec)]
    unique = {repr(e): e for e in errors}
    if unique:
        raise PlanError(list(unique.values()))
    inserted, existing = _insert(session, insert_sweep, spec, owner, settings, idempotency_key)
    if inserted is None:
        return existing, None
    for stage_id, queue in inserted.to_send:
        send_inserted(session, dispatcher, stage_id, queue)
    return inserted.parent.experiment["id"], inserted


#: Times a cancel runs again after Postgres broke a deadlock by aborting it.
CANCEL_ATTEMPTS = 3


def cancel_experiment(session: Session, experiment_id: str, dispatcher: Dispatcher) -> Experiment:
    """Request cancellation: queued stages are cancelled now and their waiting messages dropped;
    a running stage stops at its next step (the worker reads `cancel_requested`) and the worker
    then marks the experiment. A sweep's members are cancelled with it.

    A sweep's cancel locks the parent, then its members' stages; a worker ending a member's
    stage holds that stage, then locks the parent to roll it up. When the two cross, Postgres
    aborts one transaction: the worker's is retried by `backoff.retrying`, this one here."""
    for attempt in range(1, CANCEL_ATTEMPTS + 1):
        try:
            return _cancel_once(session, experiment_id, dispatcher)
        except OperationalError as e:
            session.rollback()
            if not is_deadlock(e) or attempt == CANCEL_ATTEMPTS:
                raise
            log.warning("cancel of %s crossed a worker (deadlock); again", experiment_id)
    raise AssertionError("unreachable")


def _cancel_once(session: Session, experiment_id: str, dispatcher: Dispatcher) -> Experiment:
    experiment = session.get(
        Experiment, experiment_id, with_for_update=True, populate_existing=True
    )
    if experiment is None:
        raise LookupError(experiment_id)
    if experiment.status.finished:
        raise Conflict(f"experiment {experiment_id} already {experiment.status.value}")
    cancelled = lifecycle.request_cancel(session, experiment)  # a sweep's members too
    rows = session.execute(select(Stage.id, Stage.queue).where(Stage.id.in_(cancelled)))
    queues = {stage_id: queue for stage_id, queue in rows}
    session.commit()
    session.refresh(experiment)
    for queue in {queues[i] for i in cancelled}:
        try:
            dispatcher.drop(queue, {i for i in cancelled if queues[i] == queue})
        except Exception:  # noqa: BLE001 - a message left behind is skipped by the worker
            log.warning("could not drop the messages of %s from %s", experiment_id, queue)
    return experiment


def retry_experiment(session: Session, experiment_id: str, dispatcher: Dispatcher) -> Experiment:
    """Queue a failed or cancelled experiment's unfinished stages again (succeeded stages are
    kept; each resumes from its last checkpoint) and enqueue the first of them. The stages of
    other experiments that failed only because they needed those are queued again too (a
    compute-matched baseline whose child failed), and a sweep's member also queues its
    parent's comparison again (a running one runs again when it ends); they are sent once the
    member's stages end (`lifecycle.retry`). A failed, cancelled or partial sweep retries its
    failed and cancelled members, then its comparison (`lifecycle.retry_sweep`)."""
    experiment = session.get(
        Experiment, experiment_id, with_for_update=True, populate_existing=True
    )
    if experiment is None:
        raise LookupError(experiment_id)
    if experiment.status not in (StageStatus.failed, StageStatus.cancelled, StageStatus.partial):
        raise Conflict(
            f"experiment {experiment_id} is {experiment.status.value}: only a failed, "
            "cancelled or partial experiment can be retried"
        )
    if lifecycle.is_sweep(experiment):  # its failed members, then its comparison
        to_send = lifecycle.retry_sweep(session, experiment)
    else:
        first = lifecycle.retry(session, experiment)
        to_send = [first] if first is not None else []
    session.commit()
    for stage in to_send:
        enqueue_stage(session, dispatcher, stage)
    session.refresh(experiment)
    return experiment


def ensure_deletable(session: Session, experiment: Experiment) -> list[str]:
    """Only a finished or cancelled experiment with nothing running may be deleted; a sweep's
    members go with it (and must have ended too). Returns the ids of the experiments deleted
    with it (their artifacts are deleted too)."""
    members = lifecycle.members(session, experiment.id)
    running = [st for e in (experiment, *members) for st in e.stages]
    if (
        not experiment.status.finished
        or any(not m.status.finished for m in members)
        or any(st.status == StageStatus.running for st in running)
    ):
        raise Conflict(
            f"experiment {experiment.id} is {experiment.status.value}: cancel it and wait until "
            "nothing runs before deleting it"
        )
    return [m.id for m in members]


def artifacts_prefix(experiment_id: str) -> str:
    """Where a run's checkpoints, results and reports live in the artifacts bucket."""
    return keys.experiment_prefix(experiment_id)
