"""Persistence: SQLAlchemy 2 models and Alembic migrations (Postgres; SQLite for local runs)."""

from distillery.db.models import (
    ApiToken,
    Artifact,
    Base,
    Dataset,
    Experiment,
    ExperimentShare,
    Metric,
    Stage,
    StageNeed,
    StageStatus,
    User,
)
from distillery.db.session import (
    engine_for,
    make_engine,
    make_session_factory,
    migrate,
    migrate_locked,
)

__all__ = [
    "ApiToken",
    "Artifact",
    "Base",
    "Dataset",
    "Experiment",
    "ExperimentShare",
    "Metric",
    "Stage",
    "StageNeed",
    "StageStatus",
    "User",
    "engine_for",
    "make_engine",
    "make_session_factory",
    "migrate",
    "migrate_locked",
]
