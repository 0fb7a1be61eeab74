"""The dataset checker's Celery app: `celery -A services.worker.checker worker -Q cpu -c 1`.

Same image as the workers, no GPU: it runs `distillery.check_dataset` (services.worker.checks).
"""

from __future__ import annotations

from distillery.settings import get_settings
from services.celery_app import make_checker_app

app = make_checker_app(get_settings())
