"""A Celery worker app for the dispatcher's tests: `distillery.run_stage` and
`distillery.check_dataset` that only record what they were called with, as JSON
`[task name, argument]` on the Redis list `<gpu queue>:seen` (DISTILLERY_* settings).

    celery -A tests.support.echo_worker worker -Q <queue>
"""

from __future__ import annotations

import json

import redis

from distillery.settings import get_settings
from services.celery_app import CHECK_DATASET_TASK, RUN_STAGE_TASK, make_celery

settings = get_settings()
app = make_celery(settings)
_seen = redis.Redis.from_url(settings.broker_url)
SEEN = f"{settings.gpu_queue}:seen"


@app.task(name=RUN_STAGE_TASK)
def run_stage(stage_id: int) -> None:
    _seen.rpush(SEEN, json.dumps([RUN_STAGE_TASK, stage_id]))


@app.task(name=CHECK_DATASET_TASK)
def check_dataset(dataset_id: str) -> None:
    _seen.rpush(SEEN, json.dumps([CHECK_DATASET_TASK, dataset_id]))
