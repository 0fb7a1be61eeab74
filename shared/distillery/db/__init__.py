"""Persistence: SQLAlchemy 2 models and Alembic migrations (Postgres; SQLite for local runs)."""

from distillery.db.models import (
    ApiToken,
    Artifact,
    Base,
    Dataset,
    Experiment,
    Metric,
    Stage,
    StageStatus,
    User,
)
from distillery.db.session import make_engine, make_session_factory, migrate

__all__ = [
    "ApiToken",
    "Artifact",
    "Base",
    "Dataset",
    "Experiment",
    "Metric",
    "Stage",
    "StageStatus",
    "User",
    "make_engine",
    "make_session_factory",
    "migrate",
]
