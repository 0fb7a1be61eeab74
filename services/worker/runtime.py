"""What a worker's pool process needs to run one stage: database sessions, storage, datasets,
a lease kept alive by a heartbeat, and sending the next stage.

Imported in the pool process only (the task and `tasks.preload_engine`), never in the parent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from distillery.access import check_experiment_access
from distillery.db import Dataset, Stage, StageStatus, make_engine, make_session_factory
from distillery.s3 import DatasetCache, make_storage
from distillery.settings import Settings
from distillery.spec import DatasetRef, ExperimentSpec
from distillery.stages import lifecycle
from distillery.stages.runner import StageRunner
from services.dispatch import CeleryDispatcher, enqueue_stage
from services.worker import preemption
from services.worker.multinode import node_launcher, shared_work_dir

log = logging.getLogger(__name__)


def dataset_resolver(
    settings: Settings, sessions: sessionmaker[Session]
) -> Callable[[DatasetRef], Path]:
    """`DatasetRef -> local folder`: platform datasets (`dataset_id`) come from the datasets
    bucket through the worker's cache (keyed by ETag, so a dataset is downloaded once)."""
    datasets = make_storage(settings, settings.datasets_bucket)
    cache = DatasetCache(settings.cache_dir)

    def resolve(ref: DatasetRef) -> Path:
        if ref.dataset_id is None:
            return Path(ref.root)  # a folder on the worker (e.g. a mounted volume)
        with sessions() as s:
            ds = s.get(Dataset, ref.dataset_id)
            if ds is None:
                raise ValueError(f"data: dataset_id {ref.dataset_id!r} does not exist")
            if ds.status != "ready":
                raise ValueError(
                    f"data: dataset {ref.dataset_id!r} is {ds.status}, not ready"
                    + (f": {ds.error}" if ds.error else "")
                )
            prefix = ds.prefix
        return cache.materialize(datasets, prefix)

    return resolve


def spec_checker(
    settings: Settings, sessions: sessionmaker[Session]
) -> Callable[[str, ExperimentSpec], None]:
    """The worker's second look at what a spec may touch (`distillery.access`), with symbolic
    links resolved on this machine: folders inside `allowed_data_roots`, own checkpoints."""

    def check(experiment_id: str, spec: ExperimentSpec) -> None:
        with sessions() as s:
            check_experiment_access(s, experiment_id, spec, settings.allowed_data_roots)

    return check


@contextmanager
def heartbeat(
    sessions: sessionmaker[Session], stage_id: int, worker: str, lease_seconds: int
) -> Iterator[None]:
    """Renew this worker's lease on the stage every `lease_seconds / 3` from a thread.

    The runner renews the lease when training reports progress; this keeps it alive through
    long silent phases (start-up, dataset download, validation, profiling) so that only a dead
    process loses its lease. It touches the stage only while this worker holds it running.
    """
    stop = threading.Event()
    interval = max(0.5, lease_seconds / 3)
    lease = timedelta(seconds=lease_seconds)

    def beat() -> None:
        while not stop.wait(interval):
            try:
                with sessions.begin() as s:
                    held = lifecycle.heartbeat(s, stage_id, worker, lease)
                log.debug("heartbeat: stage %s held: %s", stage_id, held)
            except Exception:  # noqa: BLE001 - a missed beat is retried; the lease has slack
                log.warning("heartbeat for stage %s failed", stage_id, exc_info=True)

    thread = threading.Thread(target=beat, name=f"heartbeat-{stage_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def execute_stage(app: Celery, settings: Settings, stage_id: int, worker: str) -> int | None:
    """Run stage `stage_id` with a `StageRunner`; enqueue what it says comes next (the next
    stage, on its own queue, or this stage again after a preemption pause) and the stages of
    other experiments that waited for it (`lifecycle.ready_after`)."""
    engine = make_engine(settings.database_url, settings.database_schema or None)
    sessions = make_session_factory(engine)
    runner = StageRunner(
        sessions,
        make_storage(settings, settings.artifacts_bucket),
        Path(settings.work_dir),
        worker,
        resolve_root=dataset_resolver(settings, sessions),
        lease_seconds=settings.lease_seconds,
        tracking_mode=settings.wandb_mode,
        should_pause=preemption.requested,
        check_spec=spec_checker(settings, sessions),
        launch_nodes=node_launcher(settings),
        shared_work_dir=shared_work_dir(settings),
    )
    try:
        with heartbeat(sessions, stage_id, worker, settings.lease_seconds):
            # The runner records the stage's own failures; a database that stays away
            # propagates, and the message is redelivered or re-sent by the reconciler.
            next_id = runner.run(stage_id)
        with sessions() as s:
            # stages of other experiments waiting for this one (a sweep's children, its
            # comparison) may run now, whatever its outcome
            for stage in lifecycle.ready_after(s, stage_id):
                enqueue_stage(s, CeleryDispatcher(app), stage)
                log.info("stage %s (needs %s) enqueued on %s", stage.id, stage_id, stage.queue)
            if next_id is None:
                return None
            stage = s.get(Stage, next_id)
            if stage is not None and stage.status == StageStatus.queued:
                enqueue_stage(s, CeleryDispatcher(app), stage)
                log.info("stage %s enqueued on %s", next_id, stage.queue)
        return next_id
    finally:
        engine.dispose()
