"""`/queue`: the team's one shared view of what is queued and running."""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlalchemy import or_, select
from sqlalchemy.orm import joinedload

from distillery.db import Experiment, Stage, StageStatus
from services.gateway.deps import CurrentUser, ReadSessionDep
from services.gateway.responses import model_response
from services.gateway.schemas import QueueEntry, QueueOut

router = APIRouter(prefix="/queue", tags=["queue"])


@router.get("", response_model=QueueOut)
def get_queue(session: ReadSessionDep, user: CurrentUser) -> Response:
    """Running stages and stages waiting on a queue, by enqueue time: whose, on which worker,
    since when, how far. (A later stage of an experiment waits in Postgres, not on a queue,
    until the stage before it finishes.)"""
    rows = session.scalars(
        select(Stage)
        .where(
            or_(
                Stage.status == StageStatus.running,
                (Stage.status == StageStatus.queued) & Stage.enqueued_at.is_not(None),
            )
        )
        .options(joinedload(Stage.experiment).joinedload(Experiment.owner))
        .order_by(Stage.enqueued_at.asc().nulls_last(), Stage.id)
    ).all()
    entries = [
        QueueEntry(
            experiment_id=s.experiment_id,
            experiment_name=s.experiment.name,
            owner=s.experiment.owner.name if s.experiment.owner else None,
            stage=s.name,
            queue=s.queue,
            status=s.status,
            worker_id=s.worker_id,
            enqueued_at=s.enqueued_at,
            started_at=s.started_at,
            heartbeat_at=s.heartbeat_at,
            epoch=s.epoch,
            epochs=s.epochs,
            step=s.step,
            steps=s.steps,
        )
        for s in rows
    ]
    out = QueueOut(
        running=sum(e.status == StageStatus.running for e in entries),
        queued=sum(e.status == StageStatus.queued for e in entries),
        entries=entries,
    )
    return model_response(out)
