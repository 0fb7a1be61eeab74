"""The dataset checker's Celery task: `distillery.check_dataset(dataset_id)` on the `cpu` queue.

A thin adapter: `distillery.checking.job.run_check` does the work (in a child process under the
memory and time limits). Late acks and `reject_on_worker_lost`, like the stage task: a checker
killed mid-check gives its message back, and the next check starts over cleanly.
"""

from __future__ import annotations

from functools import lru_cache

from celery import shared_task
from sqlalchemy.orm import Session, sessionmaker

from distillery.checking.job import run_check
from distillery.db import make_engine, make_session_factory
from distillery.settings import get_settings
from distillery.stages.lifecycle import process_identity
from services.celery_app import CHECK_DATASET_TASK


@lru_cache(maxsize=1)
def _sessions() -> sessionmaker[Session]:
    settings = get_settings()
    engine = make_engine(settings.database_url, settings.database_schema or None)
    return make_session_factory(engine)


@shared_task(
    name=CHECK_DATASET_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True
)
def check_dataset(dataset_id: str) -> str | None:
    """Check dataset `dataset_id`; returns the status it ended with (None: not by this call)."""
    return run_check(get_settings(), _sessions(), dataset_id, process_identity())
