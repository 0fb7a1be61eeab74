"""The workers' Celery app: `celery -A services.worker.app worker -Q gpu -c 1`.

Built by `services.celery_app.make_worker_app` (late acks, prefetch 1, a fresh process per
stage). This module and the task module import no torch, so the parent of the prefork pool
never touches CUDA; the child imports the engine after the fork.
"""

from __future__ import annotations

from distillery.settings import get_settings
from services.celery_app import make_worker_app

app = make_worker_app(get_settings())
