"""The GPU worker: Celery tasks that run experiment stages, and the reconciler."""
