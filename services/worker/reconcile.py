"""The reconciler: Postgres is the source of truth, Redis only carries messages.

Every `interval` seconds (10 by default) it asks the database which stages need a message
(`distillery.stages.lifecycle.requeue_lost`): a queued stage whose message may be lost (never
sent, or sent over `stale_after` seconds ago, 30 by default) and a running stage whose lease
expired or whose holder is a dead process of this host (the stage is reset to queued and
resumes from its last checkpoint). It sends those again (see `reconcile_once` for when). A
queued stage whose message still waits in its Redis queue, or was just delivered, is left
alone, so a stage waiting behind a long one is not sent twice; any duplicate that slips through
is harmless, because a stage is claimed at most once at a time.

Dataset checks get the same care (`reconcile_checks`): a dataset that stays `checking` with no
live message for `stale_after` seconds, or whose check's holder died or let its lease expire,
is sent to the `cpu` queue again.

Run it once per deployment: `python -m services.worker.reconcile [--interval S] [--stale-after S]`.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from datetime import UTC, datetime

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from distillery.checking import lifecycle as checks
from distillery.db import make_engine, make_session_factory
from distillery.settings import Settings, get_settings
from distillery.stages import lifecycle
from services.celery_app import make_celery
from services.dispatch import (
    CeleryDispatcher,
    enqueue_check,
    enqueue_stage,
    pending_check_ids,
    pending_stage_ids,
)

log = logging.getLogger("distillery.reconcile")


def reconcile_once(app: Celery, sessions: sessionmaker[Session], stale_after_s: float) -> list[int]:
    """One pass; returns the ids of the stages sent again.

    - A stage whose worker died (reset by `stages_to_enqueue`, it has run before) is sent now.
    - A stage that was never sent (the gateway or the finishing worker could not reach the
      broker) is sent once it has been runnable (`lifecycle.runnable_since`: also after the
      stages of other experiments it needs) for `stale_after_s`; sooner, its sender may
      just be about to send it.
    - A stage sent over `stale_after_s` ago is sent again unless its message is still alive in
      Redis (waiting in its queue, or just delivered).
    """
    at = datetime.now(UTC)
    sent: list[int] = []
    dispatcher = CeleryDispatcher(app)
    with sessions() as s:
        candidates = lifecycle.requeue_lost(s, at, stale_after_s)
        stale = [st for st in candidates if st.enqueued_at is not None]
        pending = (
            pending_stage_ids(app, {st.queue for st in stale}, stale_after_s) if stale else set()
        )
        for stage in candidates:
            if stage.enqueued_at is None and stage.attempts == 0:
                since = lifecycle.runnable_since(s, stage)
                if since is not None and (at - since).total_seconds() < stale_after_s:
                    continue  # its sender is probably sending it right now
            elif stage.enqueued_at is not None and stage.id in pending:
                lifecycle.mark_enqueued(s, stage)  # its message is alive: look again later
                continue
            if enqueue_stage(s, dispatcher, stage):
                sent.append(stage.id)
                log.info("re-enqueued stage %s (%s) on %s", stage.id, stage.name, stage.queue)
        s.commit()
    return sent


def reconcile_checks(
    app: Celery, sessions: sessionmaker[Session], cpu_queue: str, stale_after_s: float
) -> list[str]:
    """One pass over the dataset checks; returns the ids of the datasets sent again.

    A check whose holder died (or let its lease expire) is sent now (its message went to the
    dead worker); one that is not held and was never sent, or sent over `stale_after_s` ago, is
    sent again unless its message is alive in Redis (waiting in the queue, or just delivered).
    """
    sent: list[str] = []
    dispatcher = CeleryDispatcher(app)
    with sessions() as s:
        lost = checks.requeue_lost(s, datetime.now(UTC), stale_after_s)
        s.commit()
        pending = pending_check_ids(app, cpu_queue, stale_after_s) if lost.stale else set()
        for dataset_id in lost.taken_over + lost.stale:
            if dataset_id in pending and dataset_id not in lost.taken_over:
                checks.mark_enqueued(s, dataset_id)  # its message is alive: look again later
                s.commit()
                continue
            if enqueue_check(s, dispatcher, dataset_id, cpu_queue):
                sent.append(dataset_id)
                log.info("re-enqueued the check of dataset %s on %s", dataset_id, cpu_queue)
    return sent


def connect(settings: Settings) -> tuple[Celery, sessionmaker[Session]]:
    """The Celery app (to send) and the database sessions of `settings`."""
    engine = make_engine(settings.database_url, settings.database_schema or None)
    return make_celery(settings), make_session_factory(engine)


def run_loop(
    settings: Settings, interval_s: float, stale_after_s: float, stop: threading.Event
) -> None:
    """Reconcile every `interval_s` until `stop` is set; errors are logged, never fatal."""
    app, sessions = connect(settings)
    log.info(
        "reconciler: every %.1fs, stale after %.0fs, lease %ss",
        interval_s,
        stale_after_s,
        settings.lease_seconds,
    )
    while not stop.is_set():
        try:
            reconcile_once(app, sessions, stale_after_s)
            reconcile_checks(app, sessions, settings.cpu_queue, stale_after_s)
        except Exception:  # noqa: BLE001 - the database or broker may be briefly away
            log.exception("reconcile pass failed; retrying in %.1fs", interval_s)
        stop.wait(interval_s)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.worker.reconcile",
        description="Re-enqueue stages and dataset checks whose Celery message was lost or whose "
        "worker died.",
    )
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between passes")
    parser.add_argument(
        "--stale-after",
        type=float,
        default=30.0,
        help="re-send a queued stage whose message is not in its queue after this many seconds",
    )
    parser.add_argument("--once", action="store_true", help="one pass, then exit (e.g. cron)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.once:  # errors exit non-zero
        settings = get_settings()
        app, sessions = connect(settings)
        sent = reconcile_once(app, sessions, args.stale_after)
        print(f"re-enqueued {len(sent)} stage(s): {sent}")
        checked = reconcile_checks(app, sessions, settings.cpu_queue, args.stale_after)
        print(f"re-enqueued {len(checked)} dataset check(s): {checked}")
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run_loop(get_settings(), args.interval, args.stale_after, stop)


if __name__ == "__main__":
    main()
