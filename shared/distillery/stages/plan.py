"""A spec becomes an experiment and its ordered stages, read from the stage registry (for the
gateway and `distillery run` alike).

`insert_experiment` is the one way an experiment is written: two Core INSERTs and no ORM objects,
the first stage marked as sent unless told otherwise (the gateway's submission: one transaction,
then the message; `distillery run`, which sends nothing, passes `send_first=False`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from distillery.db.models import Experiment, Stage, StageStatus, new_id, utcnow
from distillery.registry import STAGES
from distillery.spec import ExperimentSpec
from distillery.stages import lifecycle
from distillery.stages.kinds import StageKind


def kind_of(name: str) -> StageKind:
    return STAGES.get(name)


def planned_kinds(spec: ExperimentSpec) -> list[StageKind]:
    """The kinds an experiment of `spec` runs, in order; each kind decides if it is planned
    (a teacher given as a checkpoint is not trained again; `size` precedes an `auto` student)."""
    kinds = [kind_of(name) for name in STAGES.in_order()]
    return [k for k in kinds if k.level == "experiment" and k.planned(spec)]


def sweep_kinds(spec: ExperimentSpec) -> list[StageKind]:
    """The kinds a sweep's parent runs once its members have ended (e.g. `compare`)."""
    kinds = [kind_of(name) for name in STAGES.in_order()]
    return [k for k in kinds if k.level == "sweep" and k.planned(spec)]


def planned_stages(
    spec: ExperimentSpec, queues: dict[str, str] | None, kinds: list[StageKind] | None = None
) -> list[dict[str, Any]]:
    """`{name, position, queue}` of each planned stage (`kinds`, default `planned_kinds`), in
    order (`queues` maps a kind's queue, `gpu` or `profiler`, to the platform's queue name)."""
    queues = queues or {}
    kinds = planned_kinds(spec) if kinds is None else kinds
    return [
        {"name": kind.name, "position": position, "queue": queues.get(kind.queue, kind.queue)}
        for position, kind in enumerate(kinds)
    ]


@dataclass(frozen=True)
class InsertedExperiment:
    """What `insert_experiment` wrote: the experiment's columns and each stage's (with its id)."""

    experiment: dict[str, Any]
    stages: list[dict[str, Any]]


E, S = Experiment.__table__, Stage.__table__


def insert_experiment(
    session: Session,
    spec: ExperimentSpec,
    *,
    owner_id: int | None = None,
    queues: dict[str, str] | None = None,
    idempotency_key: str | None = None,
    kinds: list[StageKind] | None = None,
    parent_id: str | None = None,
    sweep: dict[str, Any] | None = None,
    send_first: bool = True,
) -> InsertedExperiment:
    """An experiment with one queued stage per planned kind (`planned_stages`, each on its
    kind's queue), as two Core INSERTs in the session's transaction (no ORM objects): the
    experiment, then its stages in one statement returning their ids. The first stage
    starts as sent (`lifecycle.new_stage(sent=True)`): commit, then send its message, and
    `lifecycle.mark_unsent` it if the broker refuses. Every column is given here, so the rows
    returned are what is stored. An `Idempotency-Key` the owner already used raises
    `IntegrityError` (the caller rolls back).

    A sweep (`distillery.stages.sweep_plan`) inserts its parent (`kinds`: the sweep-level
    kinds) and members (`parent_id`, their part `sweep`) through here; a member whose first
    stage waits for another experiment's is inserted with `send_first=False`."""
    t = utcnow()
    experiment = {
        "id": new_id(),
        "name": spec.name,
        "spec": spec.model_dump(mode="json"),
        "status": StageStatus.queued,
        "owner_id": owner_id,
        "cancel_requested": False,
        "idempotency_key": idempotency_key,
        "results": None,
        "parent_id": parent_id,
        "sweep": sweep,
        "created_at": t,
        "updated_at": t,
    }
    stages = [
        {
            **stage,
            **lifecycle.new_stage(sent=i == 0 and send_first),
            "experiment_id": experiment["id"],
        }
        for i, stage in enumerate(planned_stages(spec, queues, kinds))
    ]
    connection = session.connection()
    connection.execute(insert(E), experiment)
    if stages:
        ids = connection.execute(
            insert(S).returning(S.c.id, sort_by_parameter_order=True), stages
        ).scalars()
        for stage, stage_id in zip(stages, ids, strict=True):
            stage["id"] = stage_id
    return InsertedExperiment(experiment, stages)
