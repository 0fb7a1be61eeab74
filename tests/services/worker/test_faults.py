"""Faults survived, each done for real to real processes (Postgres, Redis, the S3 server and
Celery workers): a diverging spec, the S3 server and the database unreachable for a while, a
killed pool process, SIGTERM (preemption) and a failed experiment retried."""

from __future__ import annotations

import math
import os
import signal
import time

import pytest
from sqlalchemy import select

from distillery.db import Experiment, Metric, Stage, StageStatus
from distillery.settings import Settings
from distillery.spec import CrossEntropyTerm
from services.celery_app import RUN_STAGE_TASK
from services.worker.preemption import child_pids
from tests.support.experiments import experiment_status, submit, tiny_spec
from tests.support.proxy import TcpProxy

pytestmark = pytest.mark.slow


def _stage(session_factory, stage_id: int) -> Stage:
    with session_factory() as s:
        return s.get(Stage, stage_id)


def _metric_epochs(session_factory, stage_id: int) -> list[int]:
    with session_factory() as s:
        q = select(Metric.epoch).where(Metric.stage_id == stage_id).order_by(Metric.epoch)
        return list(s.scalars(q).all())


def _finished(session_factory, exp_id: str):
    return lambda: experiment_status(session_factory, exp_id).finished


def _all_finite(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_all_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_all_finite(v) for v in value)
    return True


def test_a_diverging_stage_fails_once_naming_the_step_and_stores_no_nan(
    settings, session_factory, start_worker, start_reconciler, tmp_path, poll
):
    spec = tiny_spec(
        "diverges", tmp_path / "data", epochs=3, steps=4, stages=["student"],
        optimizer="sgd", lr=10.0,
    )  # fmt: skip
    # lr and loss weights are bounded (10, 1000); together they still blow the student up
    student = spec.student.model_copy(update={"losses": [CrossEntropyTerm(weight=1000.0)]})
    spec = spec.model_copy(update={"student": student})
    exp_id, (stage_id,) = submit(session_factory, settings, spec)
    start_worker()
    start_reconciler(interval_s=0.5, stale_after_s=2)
    poll(_finished(session_factory, exp_id), 150, "experiment")
    stage = _stage(session_factory, stage_id)
    assert stage.status == StageStatus.failed
    assert stage.error.startswith("diverged at step "), stage.error
    step = int(stage.error.split()[3])
    if stage.checkpoint_key:  # only a checkpoint from before the divergence
        assert int(stage.checkpoint_key.rsplit("step-", 1)[1]) < step
    time.sleep(3)  # the reconciler never sends a failed stage again
    assert _stage(session_factory, stage_id).attempts == 1
    with session_factory() as s:
        rows = s.scalars(select(Metric.values).where(Metric.stage_id == stage_id)).all()
    assert all(_all_finite(v) for v in rows)


def _proxied_s3(settings: Settings) -> TcpProxy:
    host, port = settings.s3_endpoint.rsplit(":", 1)
    return TcpProxy(host, int(port))


def test_the_s3_server_away_for_30_s_is_waited_out(
    settings, session_factory, start_worker, tmp_path, poll
):
    spec = tiny_spec("s3-outage", tmp_path / "data", epochs=3, steps=4, stages=["student"])
    exp_id, (stage_id,) = submit(session_factory, settings, spec)
    with _proxied_s3(settings) as proxy:
        worker = start_worker(s3_endpoint=proxy.address)
        poll(lambda: _stage(session_factory, stage_id).step >= 1, 120, "training started")
        proxy.down()
        time.sleep(30)
        assert _stage(session_factory, stage_id).status == StageStatus.running
        proxy.up()
        poll(_finished(session_factory, exp_id), 180, "experiment")
    stage = _stage(session_factory, stage_id)
    assert stage.status == StageStatus.succeeded, stage.error
    assert stage.attempts == 1
    assert _metric_epochs(session_factory, stage_id) == [1, 2, 3]  # each epoch exactly once
    assert "retrying in" in worker.log()


def test_the_database_away_for_20_s_is_waited_out(
    settings, session_factory, db_url, start_worker, start_reconciler, tmp_path, poll
):
    spec = tiny_spec("db-outage", tmp_path / "data", epochs=4, steps=6, stages=["student"])
    exp_id, (stage_id,) = submit(session_factory, settings, spec)
    url = db_url.replace("127.0.0.1:5432", "{}")
    with TcpProxy("127.0.0.1", 5432) as proxy:
        via_proxy = url.format(proxy.address)
        worker = start_worker(database_url=via_proxy)
        start_reconciler(interval_s=1, stale_after_s=45, database_url=via_proxy)
        poll(lambda: _stage(session_factory, stage_id).step >= 1, 120, "training started")
        proxy.down()
        time.sleep(20)
        proxy.up()
        poll(_finished(session_factory, exp_id), 180, "experiment")
    stage = _stage(session_factory, stage_id)
    assert stage.status == StageStatus.succeeded, stage.error
    assert stage.attempts == 1
    assert _metric_epochs(session_factory, stage_id) == [1, 2, 3, 4]
    assert "retrying in" in worker.log() or "not written" in worker.log()


def test_a_killed_pool_process_s_stage_is_taken_over_at_once(
    settings, session_factory, start_worker, tmp_path, poll
):
    spec = tiny_spec(
        "killed-child", tmp_path / "data", epochs=6, steps=6, stages=["teacher"],
        num_train=12, num_val=8,
    )  # fmt: skip
    exp_id, (stage_id,) = submit(session_factory, settings, spec)
    # A lease far longer than the test: only the takeover of a dead holder can resume it.
    worker = start_worker(lease_seconds=600)
    poll(lambda: _stage(session_factory, stage_id).checkpoint_key, 150, "first checkpoint")
    holder = _stage(session_factory, stage_id).worker_id
    os.kill(int(holder.rsplit(":", 1)[1]), signal.SIGKILL)
    killed_at = time.monotonic()
    poll(
        lambda: (st := _stage(session_factory, stage_id)).attempts == 2 and st.worker_id != holder,
        90,
        "taken over",
    )
    resumed_after = time.monotonic() - killed_at
    poll(_finished(session_factory, exp_id), 180, "experiment")
    stage = _stage(session_factory, stage_id)
    assert stage.status == StageStatus.succeeded, stage.error
    assert _metric_epochs(session_factory, stage_id) == [1, 2, 3, 4, 5, 6]
    assert resumed_after < 60, resumed_after
    assert "taking over from" in worker.log()


def test_sigterm_checkpoints_the_step_and_another_worker_resumes_it_at_once(
    settings, session_factory, celery_messages, start_worker, tmp_path, poll
):
    spec = tiny_spec(
        "preempted", tmp_path / "data", epochs=2, steps=30, stages=["student"],
        num_train=60, num_val=4,
    )  # fmt: skip
    exp_id, (stage_id,) = submit(session_factory, settings, spec)
    first = start_worker(lease_seconds=600, work_dir=tmp_path / "work-1")
    poll(lambda: _stage(session_factory, stage_id).step >= 3, 150, "a few steps")
    assert child_pids(first.popen.pid), "the worker runs the stage in a pool process"
    first.popen.send_signal(signal.SIGTERM)  # what Kubernetes sends on eviction
    first.popen.wait(60)
    stage = _stage(session_factory, stage_id)
    assert stage.status == StageStatus.queued and stage.worker_id is None
    assert stage.checkpoint_key and "/ckpt/step-" in stage.checkpoint_key
    paused_at = int(stage.checkpoint_key.rsplit("step-", 1)[1])
    assert 3 <= paused_at < 60 and paused_at % 30  # mid-epoch, not an epoch end
    assert celery_messages(settings.gpu_queue) == [(RUN_STAGE_TASK, [stage_id])]

    start_worker(lease_seconds=600, work_dir=tmp_path / "work-2")
    poll(_finished(session_factory, exp_id), 180, "experiment")
    stage = _stage(session_factory, stage_id)
    assert stage.status == StageStatus.succeeded, stage.error
    assert stage.attempts == 2
    assert _metric_epochs(session_factory, stage_id) == [1, 2]


def test_a_cancelled_experiment_retried_resumes_and_keeps_finished_stages(
    settings, session_factory, start_worker, tmp_path, poll, gateway_url, make_user
):
    import httpx

    spec = tiny_spec(
        "retried", tmp_path / "data", epochs=5, steps=100, stages=["teacher", "student"],
        num_train=200,
    )  # fmt: skip
    api = httpx.Client(
        base_url=gateway_url, headers={"Authorization": f"Bearer {make_user('ana')}"}
    )
    r = api.post("/experiments", json=spec.model_dump(mode="json"))
    assert r.status_code == 201, r.text
    exp_id = r.json()["id"]
    with session_factory() as s:
        teacher, student = (st.id for st in s.get(Experiment, exp_id).stages)
    start_worker(lease_seconds=600)
    # Cancel as soon as the teacher is done: the student is queued or just started, and a
    # 500-step student cannot finish before the cancel reaches it.
    poll(
        lambda: _stage(session_factory, teacher).status == StageStatus.succeeded,
        240,
        "teacher",
        interval_s=0.05,
    )
    assert api.post(f"/experiments/{exp_id}/cancel").status_code == 200
    poll(_finished(session_factory, exp_id), 60, "cancelled")
    assert experiment_status(session_factory, exp_id) == StageStatus.cancelled
    assert _stage(session_factory, student).status == StageStatus.cancelled

    r = api.post(f"/experiments/{exp_id}/retry")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "running"  # the teacher is kept, the student queued again
    poll(_finished(session_factory, exp_id), 240, "experiment")
    assert experiment_status(session_factory, exp_id) == StageStatus.succeeded
    t, st = _stage(session_factory, teacher), _stage(session_factory, student)
    assert t.attempts == 1 and st.attempts in (1, 2)  # 2 if it had started before the cancel
    assert _metric_epochs(session_factory, student) == [1, 2, 3, 4, 5]
    r = api.post(f"/experiments/{exp_id}/retry")  # nothing to retry in a succeeded experiment
    assert r.status_code == 409 and "only a failed, cancelled or partial" in r.json()["detail"]
