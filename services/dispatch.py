"""Putting a stage (or a dataset check) on its queue, and reading or dropping what waits there.
Postgres is the source of truth; the message is only the stage (or dataset) id.

The gateway enqueues the first stage of a new experiment (or of a retried one); a worker that
finishes a stage enqueues the next, and a preempted worker its own stage again; the reconciler
re-sends lost messages. Cancelling an experiment drops its waiting messages, so a cancelled
backlog costs the workers nothing.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Protocol

import redis
from celery import Celery
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from sqlalchemy.orm import Session

from distillery.checking import lifecycle as checks
from distillery.db import Stage
from distillery.stages import lifecycle
from services.celery_app import CHECK_DATASET_TASK, RUN_STAGE_TASK

log = logging.getLogger(__name__)


#: Kombu's Redis transport keeps a queue's messages in lists `<queue>` and `<queue>\x06\x16<pri>`,
#: and messages delivered but not yet acknowledged in the hash `unacked` (delivery time in the
#: sorted set `unacked_index`).
_PRIORITY_SEP = "\x06\x16"
_PRIORITIES = (3, 6, 9)


class Dispatcher(Protocol):
    """Sends one stage to the workers listening on its queue, or one dataset check to the
    cpu queue; drops waiting messages."""

    def enqueue(self, stage_id: int, queue: str) -> None: ...

    def enqueue_check(self, dataset_id: str, queue: str) -> None: ...

    def drop(self, queue: str, stage_ids: set[int]) -> int: ...


#: The body's third part: no callbacks, errbacks, chain or chord.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def task_message(task: str, args: list[Any], queue: str, *, origin: str, reply_to: str) -> dict:
    """The message `Celery.send_task(task, args=args, queue=queue)` puts on a Redis broker:
    Celery's task protocol 2 (JSON, no kwargs) in kombu's envelope (the body base64-encoded,
    the queue as the default exchange's routing key, priority 0). Fresh task and delivery ids."""
    task_id = str(uuid.uuid4())
    body = json.dumps([args, {}, _EMBED]).encode()
    return {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": repr(args),
            "kwargsrepr": "{}",
            "origin": origin,
            "ignore_result": None,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": reply_to,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }


class RedisPublisher:
    """Puts task messages on their queues' Redis lists (LPUSH, as kombu does; workers BRPOP)
    over one kept connection pool.

    `Celery.send_task` builds its message through several layers and kombu's Redis channel a new
    `redis.Redis` client per message: about 0.5 ms of CPU per message, a third of a submission's
    work in the gateway. This sends the same message (`task_message`) for about a tenth of that.
    A refused connection is retried twice (0.1 s, 0.2 s) before the error reaches the caller."""

    def __init__(self, url: str, transport_options: dict[str, Any]) -> None:
        if not url.startswith(("redis://", "rediss://")):
            raise ValueError(
                f"broker_url: the dispatcher sends to Redis (redis:// or rediss://), not {url!r}"
            )
        self.client = redis.Redis.from_url(
            url,
            socket_connect_timeout=transport_options.get("socket_connect_timeout", 5),
            socket_timeout=transport_options.get("socket_timeout", 30),
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.1), 2),
        )
        self.origin = f"gen{os.getpid()}@{socket.gethostname()}"
        self.reply_to = str(uuid.uuid4())

    def publish(self, task: str, args: list[Any], queue: str) -> None:
        message = task_message(task, args, queue, origin=self.origin, reply_to=self.reply_to)
        self.client.lpush(queue, json.dumps(message))


_publishers: dict[str, RedisPublisher] = {}
_publishers_lock = threading.Lock()


def publisher_for(app: Celery) -> RedisPublisher:
    """This process's `RedisPublisher` for `app`'s broker (one per broker URL, kept)."""
    url = app.conf.broker_url
    with _publishers_lock:
        pub = _publishers.get(url)
        if pub is None:
            pub = _publishers[url] = RedisPublisher(url, app.conf.broker_transport_options or {})
        return pub


class CeleryDispatcher:
    """Sends `distillery.run_stage(stage_id)` by name to `queue` (no worker import), as a normal
    Celery task message put on the Redis broker directly (`RedisPublisher`)."""

    def __init__(self, celery: Celery) -> None:
        self.celery = celery
        self.publisher = publisher_for(celery)

    def enqueue(self, stage_id: int, queue: str) -> None:
        self.publisher.publish(RUN_STAGE_TASK, [stage_id], queue)

    def enqueue_check(self, dataset_id: str, queue: str) -> None:
        self.publisher.publish(CHECK_DATASET_TASK, [dataset_id], queue)

    def drop(self, queue: str, stage_ids: set[int]) -> int:
        """Remove the waiting messages of `stage_ids` from `queue` (Redis); returns how many."""
        if not stage_ids:
            return 0
        with self.celery.connection_for_write() as conn:
            if conn.transport_cls not in ("redis", "rediss"):
                return 0
            client = conn.default_channel.client
            dropped = 0
            for key in _queue_keys(queue):
                for raw in client.lrange(key, 0, -1):
                    if stage_id_of(raw) in stage_ids:
                        dropped += int(client.lrem(key, 0, raw))
            return dropped


def _queue_keys(queue: str) -> list[str]:
    return [queue, *(f"{queue}{_PRIORITY_SEP}{p}" for p in _PRIORITIES)]


def first_arg_of(raw: bytes | str | dict, task: str) -> Any:
    """The first argument of a `task` message (kombu's JSON envelope), else None."""
    try:
        msg = raw if isinstance(raw, dict) else json.loads(raw)
        if msg.get("headers", {}).get("task") != task:
            return None
        body = msg["body"]
        if msg.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        return json.loads(body)[0][0]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


def stage_id_of(raw: bytes | str | dict) -> int | None:
    """The stage id of a `run_stage` message, else None."""
    try:
        value = first_arg_of(raw, RUN_STAGE_TASK)
        return None if value is None else int(value)
    except (ValueError, TypeError):
        return None


def pending_args(app: Celery, task: str, queues: set[str], delivered_within_s: float) -> set[Any]:
    """First arguments of the `task` messages alive on a Redis broker: waiting in one of
    `queues`, or delivered to a worker less than `delivered_within_s` ago and not yet
    acknowledged (the worker is starting it). Empty for any other broker."""
    found: set[Any] = set()
    with app.connection_for_write() as conn:
        if conn.transport_cls not in ("redis", "rediss"):
            return found
        client = conn.default_channel.client
        for queue in queues:
            for key in _queue_keys(queue):
                args = (first_arg_of(m, task) for m in client.lrange(key, 0, -1))
                found |= {a for a in args if a is not None}
        since = time.time() - delivered_within_s
        for tag in client.zrangebyscore("unacked_index", since, "+inf"):
            raw = client.hget("unacked", tag)
            if raw is None:
                continue
            try:
                message, _exchange, routing_key = json.loads(raw)
            except (ValueError, TypeError):
                continue
            arg = first_arg_of(message, task)
            if routing_key in queues and arg is not None:
                found.add(arg)
    return found


def pending_stage_ids(app: Celery, queues: set[str], delivered_within_s: float) -> set[int]:
    """Ids of the stages whose `run_stage` message is alive (see `pending_args`)."""
    return {int(i) for i in pending_args(app, RUN_STAGE_TASK, queues, delivered_within_s)}


def pending_check_ids(app: Celery, queue: str, delivered_within_s: float) -> set[str]:
    """Ids of the datasets whose `check_dataset` message is alive (see `pending_args`)."""
    return {str(i) for i in pending_args(app, CHECK_DATASET_TASK, {queue}, delivered_within_s)}


def enqueue_stage(session: Session, dispatcher: Dispatcher, stage: Stage) -> bool:
    """Send `stage` (committed) and record `enqueued_at`; returns False if the broker failed.

    The stage row is committed before its message is sent, so a worker never receives an id it
    cannot load. If the broker is down the stage stays `queued` with no `enqueued_at`, which is
    what a reconciler looks for to send it again.
    """
    try:
        dispatcher.enqueue(stage.id, stage.queue)
    except Exception:  # noqa: BLE001 - any broker failure leaves the stage for the reconciler
        log.exception("could not enqueue stage %s (%s); it stays queued", stage.id, stage.name)
        return False
    lifecycle.mark_enqueued(session, stage)
    session.commit()
    return True


def enqueue_check(session: Session, dispatcher: Dispatcher, dataset_id: str, queue: str) -> bool:
    """Send `distillery.check_dataset(dataset_id)` (its row committed) to the cpu `queue` and
    record when; returns False if the broker failed (the dataset stays `checking` with no
    `check_enqueued_at`, and the reconciler sends it)."""
    try:
        dispatcher.enqueue_check(dataset_id, queue)
    except Exception:  # noqa: BLE001 - any broker failure leaves the check for the reconciler
        log.exception("could not enqueue the check of dataset %s; the reconciler will", dataset_id)
        return False
    checks.mark_enqueued(session, dataset_id)
    session.commit()
    return True


def send_inserted(session: Session, dispatcher: Dispatcher, stage_id: int, queue: str) -> bool:
    """Send a stage committed as already sent (`distillery.stages.plan.insert_experiment`: one
    transaction for a submission); returns False if the broker failed.

    If the broker is down, `enqueued_at` is cleared again (committed) and the stage waits for
    the reconciler, as after `enqueue_stage`. Should this process die between the commit and the
    send, the reconciler sends the stage once its `enqueued_at` is older than its staleness
    limit."""
    try:
        dispatcher.enqueue(stage_id, queue)
    except Exception:  # noqa: BLE001 - any broker failure leaves the stage for the reconciler
        log.exception("could not enqueue stage %s; it stays queued", stage_id)
        lifecycle.mark_unsent(session, stage_id)
        session.commit()
        return False
    return True
