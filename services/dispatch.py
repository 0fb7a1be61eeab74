"""Putting a stage on its queue. Postgres is the source of truth; the message is only the id.

The gateway enqueues the first stage of a new experiment; a worker that finishes a stage
enqueues the next (`enqueue_stage` works for both).
"""

from __future__ import annotations

import logging
from typing import Protocol

from celery import Celery
from sqlalchemy.orm import Session

from distillery.db import Stage
from distillery.db.models import utcnow
from services.celery_app import RUN_STAGE_TASK

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    """Sends one stage to the workers listening on `stage.queue`."""

    def enqueue(self, stage: Stage) -> None: ...


class CeleryDispatcher:
    """Sends `distillery.run_stage(stage.id)` by name to `stage.queue` (no worker import)."""

    def __init__(self, celery: Celery) -> None:
        self.celery = celery

    def enqueue(self, stage: Stage) -> None:
        self.celery.send_task(RUN_STAGE_TASK, args=[stage.id], queue=stage.queue)


def enqueue_stage(session: Session, dispatcher: Dispatcher, stage: Stage) -> bool:
    """Send `stage` (committed) and record `enqueued_at`; returns False if the broker failed.

    The stage row is committed before its message is sent, so a worker never receives an id it
    cannot load. If the broker is down the stage stays `queued` with no `enqueued_at`, which is
    what a reconciler looks for to send it again.
    """
    try:
        dispatcher.enqueue(stage)
    except Exception:  # noqa: BLE001 - any broker failure leaves the stage for the reconciler
        log.exception("could not enqueue stage %s (%s); it stays queued", stage.id, stage.name)
        return False
    stage.enqueued_at = utcnow()
    session.commit()
    return True
