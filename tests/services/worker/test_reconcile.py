"""The reconciler against real Postgres and Redis: lost messages and dead workers."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from distillery.db import Experiment, Stage, StageStatus
from distillery.spec import ExperimentSpec
from distillery.stages.plan import insert_experiment
from services.celery_app import RUN_STAGE_TASK, make_celery
from services.worker.reconcile import pending_stage_ids, reconcile_once, run_loop
from services.worker.runtime import heartbeat

SPEC = {
    "name": "reconcile",
    "data": {
        "train": [{"format": "cityscapes", "root": "/nonexistent"}],
        "val": [{"format": "cityscapes", "root": "/nonexistent"}],
    },
    "stages": ["teacher", "student", "profile"],
}


@pytest.fixture
def app(settings):
    return make_celery(settings)


def _experiment(session_factory, settings, age_s: float = 0) -> list[int]:
    """A submitted experiment whose first stage was never sent, submitted `age_s` ago."""
    with session_factory.begin() as s:
        inserted = insert_experiment(
            s,
            ExperimentSpec.model_validate(SPEC),
            queues={"gpu": settings.gpu_queue, "profiler": settings.profiler_queue},
            send_first=False,
        )
        s.get(Experiment, inserted.experiment["id"]).created_at = datetime.now(UTC) - timedelta(
            seconds=age_s
        )
        return [st["id"] for st in inserted.stages]


def _age_enqueued(session_factory, stage_id: int, age_s: float) -> None:
    with session_factory.begin() as s:
        s.get(Stage, stage_id).enqueued_at = datetime.now(UTC) - timedelta(seconds=age_s)


def test_a_never_sent_stage_is_sent_once_its_sender_had_time(
    app, settings, session_factory, celery_messages
):
    fresh, *_ = _experiment(session_factory, settings)
    # Just submitted: the gateway may be sending it right now.
    assert reconcile_once(app, session_factory, stale_after_s=60) == []
    old, *_ = _experiment(session_factory, settings, age_s=120)
    # Submitted two minutes ago and never sent (the broker was down): sent, first stage only.
    assert reconcile_once(app, session_factory, stale_after_s=60) == [old]
    assert celery_messages(settings.gpu_queue) == [(RUN_STAGE_TASK, [old])]
    with session_factory() as s:
        assert s.get(Stage, old).enqueued_at is not None
        assert s.get(Stage, fresh).enqueued_at is None


def test_a_lost_message_is_sent_again_and_a_waiting_one_is_not(
    app, settings, session_factory, celery_messages, redis_client
):
    first, *_ = _experiment(session_factory, settings, age_s=600)
    assert reconcile_once(app, session_factory, stale_after_s=60) == [first]
    # Sent recently: left alone.
    assert reconcile_once(app, session_factory, stale_after_s=60) == []
    # Stale but its message still waits in Redis (a long queue): not duplicated.
    _age_enqueued(session_factory, first, 600)
    assert pending_stage_ids(app, {settings.gpu_queue}, 60) == {first}
    assert reconcile_once(app, session_factory, stale_after_s=60) == []
    assert len(celery_messages(settings.gpu_queue)) == 1
    # The message is lost from Redis: the database still says queued, so it is sent again.
    redis_client.delete(settings.gpu_queue)
    _age_enqueued(session_factory, first, 600)
    assert reconcile_once(app, session_factory, stale_after_s=60) == [first]
    assert celery_messages(settings.gpu_queue) == [(RUN_STAGE_TASK, [first])]


def test_a_message_just_delivered_is_in_flight_until_stale(
    app, settings, session_factory, celery_messages, redis_client
):
    first, *_ = _experiment(session_factory, settings, age_s=600)
    assert reconcile_once(app, session_factory, stale_after_s=60) == [first]
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue(settings.gpu_queue, no_ack=False)
        message = queue.get(timeout=5)  # delivered to a "worker" that has not claimed it yet
        try:
            assert celery_messages(settings.gpu_queue) == []
            _age_enqueued(session_factory, first, 600)
            assert pending_stage_ids(app, {settings.gpu_queue}, 60) == {first}
            assert reconcile_once(app, session_factory, stale_after_s=60) == []
            # That worker died long ago without claiming it: the message is sent again.
            tag = message.delivery_tag
            redis_client.zadd("unacked_index", {tag: time.time() - 3600})
            _age_enqueued(session_factory, first, 600)
            assert reconcile_once(app, session_factory, stale_after_s=60) == [first]
            assert celery_messages(settings.gpu_queue) == [(RUN_STAGE_TASK, [first])]
        finally:
            message.ack()
            queue.close()


def test_a_stage_whose_worker_died_is_requeued_and_a_live_one_is_not(
    app, settings, session_factory, celery_messages
):
    dead, *_ = _experiment(session_factory, settings, age_s=600)
    live, *_ = _experiment(session_factory, settings, age_s=600)
    now = datetime.now(UTC)
    with session_factory.begin() as s:
        for stage_id, lease in (
            (dead, now - timedelta(seconds=1)),
            (live, now + timedelta(seconds=60)),
        ):
            st = s.get(Stage, stage_id)
            st.status, st.worker_id, st.attempts = StageStatus.running, f"host:{stage_id}", 1
            st.lease_expires_at, st.enqueued_at = lease, now - timedelta(hours=1)
            st.experiment.status = StageStatus.running
    assert reconcile_once(app, session_factory, stale_after_s=300) == [dead]
    assert celery_messages(settings.gpu_queue) == [(RUN_STAGE_TASK, [dead])]
    with session_factory() as s:
        assert s.get(Stage, dead).status == StageStatus.queued
        assert s.get(Stage, live).status == StageStatus.running


def test_run_loop_reconciles_until_stopped(settings, session_factory, celery_messages):
    first, *_ = _experiment(session_factory, settings, age_s=600)
    stop = threading.Event()
    loop = threading.Thread(target=run_loop, args=(settings, 0.1, 300, stop))
    loop.start()
    try:
        deadline = time.monotonic() + 10
        while not celery_messages(settings.gpu_queue) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert celery_messages(settings.gpu_queue) == [(RUN_STAGE_TASK, [first])]
    finally:
        stop.set()
        loop.join(5)
    assert not loop.is_alive()


def test_heartbeat_renews_only_the_lease_this_worker_holds(session_factory, settings):
    mine, *_ = _experiment(session_factory, settings)
    theirs, *_ = _experiment(session_factory, settings)
    start = datetime.now(UTC)
    with session_factory.begin() as s:
        for stage_id, worker in ((mine, "me:1"), (theirs, "other:2")):
            st = s.get(Stage, stage_id)
            st.status, st.worker_id, st.lease_expires_at = StageStatus.running, worker, start
    with heartbeat(session_factory, mine, "me:1", lease_seconds=5):
        time.sleep(2.2)  # one beat every lease / 3 s
    with session_factory() as s:
        assert s.get(Stage, mine).lease_expires_at > start + timedelta(seconds=5)
        assert s.get(Stage, mine).heartbeat_at is not None
        assert s.get(Stage, theirs).lease_expires_at == start
