"""The worker's Celery settings for long GPU jobs."""

from __future__ import annotations

from distillery.settings import get_settings
from services.celery_app import RUN_STAGE_TASK
from services.profiler.app import app as profiler_app
from services.worker.app import app


def test_long_gpu_job_settings():
    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.worker_max_tasks_per_child == 1  # a fresh process per stage
    assert conf.worker_proc_alive_timeout >= 60  # the engine preload may take a while
    visibility = conf.broker_transport_options["visibility_timeout"]
    assert visibility == get_settings().visibility_timeout_s
    assert visibility >= 24 * 3600  # longer than any stage
    app.loader.import_default_modules()
    task = app.tasks[RUN_STAGE_TASK]
    assert task.acks_late and task.reject_on_worker_lost


def test_profiler_worker_runs_one_task_at_a_time_with_the_same_task():
    assert profiler_app.conf.worker_concurrency == 1
    profiler_app.loader.import_default_modules()
    assert RUN_STAGE_TASK in profiler_app.tasks
