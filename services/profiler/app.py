"""The profiler worker's Celery app: `celery -A services.profiler.app worker -Q profiler -c 1`.

The same task as the GPU worker, consuming only the `profiler` queue with concurrency 1, so that
latency measurements never share the machine with training or with another measurement.
"""

from __future__ import annotations

from distillery.settings import get_settings
from services.celery_app import make_worker_app

settings = get_settings()
app = make_worker_app(settings)
app.conf.update(worker_concurrency=1, task_default_queue=settings.profiler_queue)
