"""Postgres is the source of truth: a message lost from Redis is sent again, and a stage whose
worker was killed resumes on another worker from its last checkpoint in S3. Real processes."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from distillery.db import Metric, Stage, StageStatus
from services.celery_app import RUN_STAGE_TASK
from tests.support.experiments import experiment_status, submit, tiny_spec

pytestmark = pytest.mark.slow


def drop_unacked(redis_client, queue: str) -> None:
    """Remove a killed worker's unacknowledged messages of `queue` from kombu's `unacked` hash."""
    for tag, raw in redis_client.hgetall("unacked").items():
        _message, _exchange, routing_key = json.loads(raw)
        if routing_key == queue:
            redis_client.hdel("unacked", tag)
            redis_client.zrem("unacked_index", tag)


def test_a_message_deleted_from_redis_is_sent_again_and_the_experiment_completes(
    settings,
    session_factory,
    celery_messages,
    redis_client,
    start_worker,
    start_reconciler,
    tmp_path,
    poll,
):
    spec = tiny_spec(
        "lost-message", tmp_path / "data", epochs=1, steps=1, stages=["teacher", "student"]
    )
    exp_id, (teacher, student) = submit(session_factory, settings, spec)
    assert celery_messages(settings.gpu_queue) == [(RUN_STAGE_TASK, [teacher])]
    redis_client.delete(settings.gpu_queue)  # the message is lost
    start_worker()
    reconciler = start_reconciler(interval_s=0.5, stale_after_s=2)
    poll(lambda: experiment_status(session_factory, exp_id).finished, 150, "experiment")
    assert experiment_status(session_factory, exp_id) == StageStatus.succeeded
    with session_factory() as s:
        assert [s.get(Stage, i).attempts for i in (teacher, student)] == [1, 1]
    assert f"re-enqueued stage {teacher} (teacher)" in reconciler.log()


def test_a_killed_worker_s_stage_resumes_from_its_checkpoint_on_a_new_worker(
    settings,
    session_factory,
    redis_client,
    start_worker,
    start_reconciler,
    tmp_path,
    poll,
):
    spec = tiny_spec(
        "killed-worker",
        tmp_path / "data",
        epochs=8,
        steps=6,
        stages=["teacher"],
        num_train=12,
        num_val=8,
    )
    exp_id, (stage_id,) = submit(session_factory, settings, spec)
    first = start_worker(lease_seconds=6, work_dir=tmp_path / "work-1")
    reconciler = start_reconciler(interval_s=0.5, stale_after_s=60)

    def after_epoch_1() -> bool:
        with session_factory() as s:
            validated = s.scalars(select(Metric.epoch).where(Metric.stage_id == stage_id)).all()
            return bool(s.get(Stage, stage_id).checkpoint_key) and 1 in validated

    poll(after_epoch_1, 150, "epoch 1 checkpoint", interval_s=0.05)
    first.kill_group()  # SIGKILL the worker and the child running the stage
    first.popen.wait(10)
    with session_factory() as s:
        st = s.get(Stage, stage_id)
        assert st.status == StageStatus.running, "stage ended before the kill: make it longer"
        assert st.epoch < 8
        killed_worker = st.worker_id
    drop_unacked(redis_client, settings.gpu_queue)

    # A new worker with an empty work dir: the checkpoint can only come from S3.
    second = start_worker(lease_seconds=6, work_dir=tmp_path / "work-2")
    poll(lambda: experiment_status(session_factory, exp_id).finished, 180, "experiment")
    assert experiment_status(session_factory, exp_id) == StageStatus.succeeded
    with session_factory() as s:
        st = s.get(Stage, stage_id)
        assert st.status == StageStatus.succeeded
        assert st.attempts == 2
        assert st.worker_id != killed_worker
        epochs = s.scalars(
            select(Metric.epoch).where(Metric.stage_id == stage_id).order_by(Metric.id)
        ).all()
    # Every epoch validated exactly once: the second attempt did not start again at epoch 1.
    assert epochs == list(range(1, 9)), epochs
    assert (tmp_path / "work-2" / exp_id / "teacher" / "ckpt").is_dir()
    assert second.alive()
    # Only the killed worker lost its lease; the live one kept renewing it.
    assert reconciler.log().count("lost its worker") == 1, reconciler.log()
