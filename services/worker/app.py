"""The workers' Celery app: `celery -A services.worker.app worker -Q gpu -c 1`.

On top of the shared settings (`services.celery_app.make_celery`: late acks, prefetch 1, a Redis
visibility timeout longer than any stage) a worker runs every stage in a fresh process
(`worker_max_tasks_per_child=1`). This module and the task module import no torch, so the parent
of the prefork pool never touches CUDA; the child imports the engine after the fork.
"""

from __future__ import annotations

from celery import Celery

from distillery.settings import Settings, get_settings
from services.celery_app import make_celery


def make_worker_app(settings: Settings) -> Celery:
    """The Celery app of a worker process, with the `distillery.run_stage` task."""
    app = make_celery(settings, include=["services.worker.tasks"])
    app.conf.update(
        worker_max_tasks_per_child=1,
        # A fresh pool process imports the engine before it reports ready
        # (`tasks.preload_engine`); on a busy machine that takes longer than Celery's 4 s.
        worker_proc_alive_timeout=120,
        # Task events let Flower show what each worker runs.
        worker_send_task_events=True,
    )
    return app


app = make_worker_app(get_settings())
