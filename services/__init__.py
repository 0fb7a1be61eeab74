"""Distillery's services: thin adapters around the engine in `distillery` (HTTP, Celery)."""
