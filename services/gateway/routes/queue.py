"""`/queue`: the team's one shared view of what is queued and running."""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import TypeAdapter

from distillery.db import StageStatus
from services.gateway import queries
from services.gateway.deps import CurrentUser, RowsDep
from services.gateway.responses import model_response
from services.gateway.schemas import QueueEntry, QueueOut

router = APIRouter(prefix="/queue", tags=["queue"])

#: Rows become entries in one pydantic call (the queue can hold hundreds of stages).
ENTRIES = TypeAdapter(list[QueueEntry])


@router.get("", response_model=QueueOut)
def get_queue(rows: RowsDep, user: CurrentUser) -> Response:
    """Running stages and stages waiting on a queue, by enqueue time: whose, on which worker,
    since when, how far. (A later stage of an experiment waits in Postgres, not on a queue,
    until the stage before it finishes.)"""
    with rows() as conn:
        found = conn.execute(queries.queue_query()).all()
    entries = ENTRIES.validate_python(found, from_attributes=True)
    out = QueueOut(
        running=sum(e.status == StageStatus.running for e in entries),
        queued=sum(e.status == StageStatus.queued for e in entries),
        entries=entries,
    )
    return model_response(out)
