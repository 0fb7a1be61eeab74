"""Celery tasks of the workers: `distillery.run_stage`.

A task loads nothing itself: it builds a `StageRunner` (the stage lifecycle shared with
`distillery run`) in the fresh child process, runs the stage and, on success, sends the next stage
to that stage's own queue (profiling goes to the `profiler` queue).
"""

from __future__ import annotations

import importlib
import logging

from celery import Task, shared_task
from celery.signals import worker_process_init, worker_shutting_down

from distillery.settings import get_settings
from distillery.stages import lifecycle
from services.celery_app import RUN_STAGE_TASK
from services.worker import preemption

log = logging.getLogger(__name__)

#: Imported by each fresh pool process while it waits for a task, so that an idle worker starts
#: a stage without first paying for these imports. Importing torch does not initialise CUDA.
PRELOAD = ("services.worker.runtime", "distillery.models", "distillery.training.stage")


def worker_id() -> str:
    """Unique per process (`<host>/<pid namespace>:<pid>`): a lease held by a dead process is
    never mistaken for a live one, nor a live one in another container for a dead one."""
    return lifecycle.process_identity()


@worker_shutting_down.connect
def pause_running_stages(**_: object) -> None:
    """SIGTERM to the worker: its running stage checkpoints and goes back to the queue."""
    preemption.forward_to_children()


@worker_process_init.connect
def preload_engine(**_: object) -> None:
    for module in PRELOAD:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - the task imports it again and reports the error
            log.exception("could not preload %s", module)


@shared_task(
    name=RUN_STAGE_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True
)
def run_stage(self: Task, stage_id: int) -> int | None:
    """Run stage `stage_id`; returns the id of the stage it enqueued next, if any."""
    from services.worker.runtime import execute_stage  # the engine: torch is imported here

    # Here, not at process start: billiard resets the pool process's exit signals after its
    # initializers run.
    preemption.install_in_child()
    return execute_stage(self.app, get_settings(), stage_id, worker_id())
