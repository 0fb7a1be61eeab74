"""`/queue`: the team's one shared view of what is queued and running, a page at a time."""

from __future__ import annotations

from operator import itemgetter
from typing import Annotated

from fastapi import APIRouter, Query, Response

from services.gateway import queries
from services.gateway.deps import CurrentUser, RowsDep
from services.gateway.limits import MAX_OFFSET
from services.gateway.responses import rows_response
from services.gateway.schemas import QueueEntry, QueueOut

router = APIRouter(prefix="/queue", tags=["queue"])

#: An entry's fields, in `QueueEntry`'s order (columns of `queries.queue_query`).
FIELDS = tuple(QueueEntry.model_fields)
#: Entries one answer holds unless asked for more: the view grows with every waiting stage.
DEFAULT_LIMIT = 50
MAX_LIMIT = 500


@router.get("", response_model=QueueOut)
def get_queue(
    rows: RowsDep,
    user: CurrentUser,
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description="entries in this answer, from `offset`")
    ] = DEFAULT_LIMIT,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Response:
    """Running stages and stages waiting on a queue, by enqueue time: whose, on which worker,
    since when, how far. (A later stage of an experiment waits in Postgres, not on a queue,
    until the stage before it finishes.)

    One page of at most `limit` entries from `offset`; `running`, `queued` and `total` count
    the whole view. One query."""
    params = {"limit": limit, "offset": offset}
    with rows() as conn:
        result = conn.execute(queries.queue_query(), params)
        entry = itemgetter(*(list(result.keys()).index(f) for f in FIELDS))
        found = result.all()
        # Past the last page no row carries the counts.
        counts = found[0] if found else conn.execute(queries.queue_count_query()).one()
    out = {
        "running": counts.running,
        "queued": counts.total - counts.running,
        "total": counts.total,
        "limit": limit,
        "offset": offset,
        "entries": [dict(zip(FIELDS, entry(r), strict=True)) for r in found],
    }
    return rows_response(out)
