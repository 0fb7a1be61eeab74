"""The dispatcher's messages (`services.dispatch.RedisPublisher`, one kept Redis connection pool
per process) are the messages `Celery.send_task` sends, and a real Celery worker runs them."""

from __future__ import annotations

import base64
import json

from distillery.settings import Settings
from services.celery_app import CHECK_DATASET_TASK, RUN_STAGE_TASK, make_celery
from services.dispatch import CeleryDispatcher, stage_id_of
from tests.support import devstack


def _settings(redis_url, queues) -> Settings:
    return Settings(
        _env_file=None, broker_url=redis_url, gpu_queue=queues.gpu, cpu_queue=queues.cpu
    )


def _shape(value):
    """The keys of every mapping in `value`, nested (values left out)."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    return type(value).__name__


def test_the_dispatcher_sends_what_celery_sends(redis_url, queues, redis_client, celery_messages):
    app = make_celery(_settings(redis_url, queues))
    app.send_task(RUN_STAGE_TASK, args=[7], queue=queues.gpu)
    CeleryDispatcher(app).enqueue(7, queues.gpu)
    ours, celery = (json.loads(m) for m in redis_client.lrange(queues.gpu, 0, -1))  # newest first

    assert _shape(ours) == _shape(celery)
    fresh = {"id", "root_id", "origin"}  # per message, or per process
    assert {k: v for k, v in ours["headers"].items() if k not in fresh} == {
        k: v for k, v in celery["headers"].items() if k not in fresh
    }
    assert ours["headers"]["id"] == ours["headers"]["root_id"] != celery["headers"]["id"]
    per_message = {"correlation_id", "delivery_tag", "reply_to"}
    assert {k: v for k, v in ours["properties"].items() if k not in per_message} == {
        k: v for k, v in celery["properties"].items() if k not in per_message
    }
    assert json.loads(base64.b64decode(ours["body"])) == json.loads(
        base64.b64decode(celery["body"])
    )
    assert celery_messages(queues.gpu) == [(RUN_STAGE_TASK, [7])] * 2
    assert stage_id_of(redis_client.lindex(queues.gpu, 0)) == 7


def test_a_celery_worker_runs_the_dispatched_tasks(redis_url, queues, redis_client, processes):
    settings = _settings(redis_url, queues)
    dispatcher = CeleryDispatcher(make_celery(settings))
    for stage_id in (41, 42):
        dispatcher.enqueue(stage_id, queues.gpu)
    dispatcher.enqueue_check("ds-1", queues.gpu)
    worker = devstack.start_worker(
        devstack.process_env(settings),
        queues.gpu,
        log_path=processes.log_path("worker"),
        app="tests.support.echo_worker",
    )
    processes.add(worker)
    key = f"{queues.gpu}:seen"  # where the echo worker records what it ran
    try:
        devstack.wait_until(lambda: redis_client.llen(key) >= 3, 60, "3 tasks run")
        seen = [json.loads(m) for m in redis_client.lrange(key, 0, -1)]
        assert seen == [[RUN_STAGE_TASK, 41], [RUN_STAGE_TASK, 42], [CHECK_DATASET_TASK, "ds-1"]]
        assert redis_client.llen(queues.gpu) == 0
        devstack.wait_until(lambda: worker.log().count("succeeded in") == 3, 10, "3 successes")
    finally:
        redis_client.delete(key)
