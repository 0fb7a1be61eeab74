"""The Celery app the gateway and the workers share (broker, acks, routes).

`shared/` imports no Celery: the app lives here. The gateway only *sends* tasks by name
(`RUN_STAGE_TASK`, `CHECK_DATASET_TASK`) and never imports the worker's task modules; workers
add them with `celery.conf.include` or by importing them.
"""

from __future__ import annotations

from celery import Celery

from distillery.settings import Settings

#: The task a worker registers to run one stage: `run_stage(stage_id: int)`.
RUN_STAGE_TASK = "distillery.run_stage"
#: The task the cpu-queue worker registers to check one dataset: `check_dataset(dataset_id)`.
CHECK_DATASET_TASK = "distillery.check_dataset"


def make_celery(settings: Settings, include: list[str] | None = None) -> Celery:
    """A Celery app on `settings.broker_url`.

    One message per stage; a worker takes one at a time (`worker_prefetch_multiplier=1`) and
    acknowledges it only when the stage ends (`task_acks_late`), so a worker that dies mid-stage
    gives its message back (after `visibility_timeout_s` on Redis). Postgres, not the broker, is
    the source of truth; messages carry only the stage id.
    """
    app = Celery("distillery", broker=settings.broker_url, include=include or [])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.gpu_queue,
        task_routes={
            RUN_STAGE_TASK: {"queue": settings.gpu_queue},
            CHECK_DATASET_TASK: {"queue": settings.cpu_queue},
        },
        task_create_missing_queues=True,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "socket_connect_timeout": 5,
            "socket_timeout": 30,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        task_publish_retry=True,
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
        },
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return app


def make_worker_app(settings: Settings) -> Celery:
    """The Celery app of a worker process (GPU or profiler), with the `distillery.run_stage`
    task. On top of `make_celery`: every stage runs in a fresh pool process
    (`worker_max_tasks_per_child=1`), so the parent of the prefork pool never touches CUDA."""
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


def make_checker_app(settings: Settings) -> Celery:
    """The Celery app of the dataset checker (`services.worker.checker`, queue `cpu`), with the
    `distillery.check_dataset` task. Each check runs in a child process of its own under the
    memory and time limits, so the pool process stays small and lives on."""
    app = make_celery(settings, include=["services.worker.checks"])
    app.conf.update(worker_send_task_events=True)
    return app
