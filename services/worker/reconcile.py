"""The reconciler: Postgres is the source of truth, Redis only carries messages.

Every `interval` seconds it asks the database which stages need a message
(`distillery.runner.stages_to_enqueue`): a queued stage whose message may be lost (never sent, or
sent over `stale_after` seconds ago) and a running stage whose lease expired (its worker was
killed; the stage is reset to queued and resumes from its last checkpoint). It sends those again
(see `reconcile_once` for when). A queued stage whose message still waits in its Redis queue, or
was just delivered, is left alone, so a stage waiting behind a long one is not sent twice; any
duplicate that slips through is harmless, because the runner claims a stage at most once at a
time.

Run it once per deployment: `python -m services.worker.reconcile [--interval S] [--stale-after S]`.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import signal
import threading
import time
from datetime import UTC, datetime

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from distillery.db import Stage, make_engine, make_session_factory
from distillery.runner import stages_to_enqueue
from distillery.settings import Settings, get_settings
from services.celery_app import RUN_STAGE_TASK, make_celery
from services.dispatch import CeleryDispatcher, enqueue_stage

log = logging.getLogger("distillery.reconcile")

#: Kombu's Redis transport keeps a queue's messages in lists `<queue>` and `<queue>\x06\x16<pri>`,
#: and messages delivered but not yet acknowledged in the hash `unacked` (delivery time in the
#: sorted set `unacked_index`).
_PRIORITY_SEP = "\x06\x16"
_PRIORITIES = (3, 6, 9)


def pending_stage_ids(app: Celery, queues: set[str], delivered_within_s: float) -> set[int]:
    """Ids of the stages whose `run_stage` message is alive on a Redis broker: waiting in one of
    `queues`, or delivered to a worker less than `delivered_within_s` ago and not yet
    acknowledged (the worker is starting the stage). Empty for any other broker."""
    found: set[int] = set()
    with app.connection_for_write() as conn:
        if conn.transport_cls not in ("redis", "rediss"):
            return found
        client = conn.default_channel.client
        for queue in queues:
            for key in [queue, *(f"{queue}{_PRIORITY_SEP}{p}" for p in _PRIORITIES)]:
                found |= {i for i in map(_stage_id, client.lrange(key, 0, -1)) if i is not None}
        since = time.time() - delivered_within_s
        for tag in client.zrangebyscore("unacked_index", since, "+inf"):
            raw = client.hget("unacked", tag)
            if raw is None:
                continue
            try:
                message, _exchange, routing_key = json.loads(raw)
            except (ValueError, TypeError):
                continue
            stage_id = _stage_id(message)
            if routing_key in queues and stage_id is not None:
                found.add(stage_id)
    return found


def _stage_id(raw: bytes | str | dict) -> int | None:
    """The stage id of a `run_stage` message (kombu's JSON envelope), else None."""
    try:
        msg = raw if isinstance(raw, dict) else json.loads(raw)
        if msg.get("headers", {}).get("task") != RUN_STAGE_TASK:
            return None
        body = msg["body"]
        if msg.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        return int(json.loads(body)[0][0])
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


def _eligible_since(stage: Stage) -> datetime | None:
    """When a never-sent stage became runnable: its experiment's submission for the first
    stage, else the end of the stage before it."""
    if stage.position == 0:
        return _aware(stage.experiment.created_at)
    before = [x for x in stage.experiment.stages if x.position < stage.position]
    return _aware(max(before, key=lambda x: x.position).finished_at) if before else None


def _aware(ts: datetime | None) -> datetime | None:
    return ts.replace(tzinfo=UTC) if ts is not None and ts.tzinfo is None else ts


def reconcile_once(app: Celery, sessions: sessionmaker[Session], stale_after_s: float) -> list[int]:
    """One pass; returns the ids of the stages sent again.

    - A stage whose worker died (reset by `stages_to_enqueue`, it has run before) is sent now.
    - A stage that was never sent (the gateway or the finishing worker could not reach the
      broker) is sent once it has been runnable for `stale_after_s`; sooner, its sender may
      just be about to send it.
    - A stage sent over `stale_after_s` ago is sent again unless its message is still alive in
      Redis (waiting in its queue, or just delivered).
    """
    at = datetime.now(UTC)
    sent: list[int] = []
    dispatcher = CeleryDispatcher(app)
    with sessions() as s:
        candidates = stages_to_enqueue(s, at, stale_after_s)
        stale = [st for st in candidates if st.enqueued_at is not None]
        pending = (
            pending_stage_ids(app, {st.queue for st in stale}, stale_after_s) if stale else set()
        )
        for stage in candidates:
            if stage.enqueued_at is None and stage.attempts == 0:
                since = _eligible_since(stage)
                if since is not None and (at - since).total_seconds() < stale_after_s:
                    continue  # its sender is probably sending it right now
            elif stage.enqueued_at is not None and stage.id in pending:
                stage.enqueued_at = at  # its message is alive: look again after stale_after
                continue
            if enqueue_stage(s, dispatcher, stage):
                sent.append(stage.id)
                log.info("re-enqueued stage %s (%s) on %s", stage.id, stage.name, stage.queue)
        s.commit()
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
        except Exception:  # noqa: BLE001 - the database or broker may be briefly away
            log.exception("reconcile pass failed; retrying in %.1fs", interval_s)
        stop.wait(interval_s)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.worker.reconcile",
        description="Re-enqueue stages whose Celery message was lost or whose worker died.",
    )
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between passes")
    parser.add_argument(
        "--stale-after",
        type=float,
        default=300.0,
        help="re-send a queued stage whose message is not in its queue after this many seconds",
    )
    parser.add_argument("--once", action="store_true", help="one pass, then exit (e.g. cron)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.once:  # errors exit non-zero
        sent = reconcile_once(*connect(get_settings()), args.stale_after)
        print(f"re-enqueued {len(sent)} stage(s): {sent}")
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run_loop(get_settings(), args.interval, args.stale_after, stop)


if __name__ == "__main__":
    main()
