"""A spec becomes an experiment and its ordered stages, read from the stage registry (for the
gateway and `distillery run` alike)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from distillery.db.models import Experiment, Stage
from distillery.registry import STAGES
from distillery.spec import ExperimentSpec
from distillery.stages.kinds import StageKind


def kind_of(name: str) -> StageKind:
    return STAGES.get(name)


def planned_kinds(spec: ExperimentSpec) -> list[StageKind]:
    """The kinds an experiment of `spec` runs, in order; each kind decides if it is planned
    (a teacher given as a checkpoint is not trained again; `size` precedes an `auto` student)."""
    kinds = [kind_of(name) for name in STAGES.in_order()]
    return [k for k in kinds if k.planned(spec)]


def create_experiment(
    session: Session,
    spec: ExperimentSpec,
    *,
    owner_id: int | None = None,
    queues: dict[str, str] | None = None,
    idempotency_key: str | None = None,
) -> Experiment:
    """Add an experiment with one queued stage per planned kind, each on its kind's queue
    (`queues` maps a kind's queue, `gpu` or `profiler`, to the platform's queue name)."""
    queues = queues or {}
    exp = Experiment(
        name=spec.name,
        spec=spec.model_dump(mode="json"),
        owner_id=owner_id,
        idempotency_key=idempotency_key,
    )
    for position, kind in enumerate(planned_kinds(spec)):
        queue = queues.get(kind.queue, kind.queue)
        exp.stages.append(Stage(name=kind.name, position=position, queue=queue))
    session.add(exp)
    session.flush()
    return exp
