"""Alembic migrations build exactly the schema the SQLAlchemy models describe."""

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from distillery.db import Base, make_engine, migrate

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _diff(engine) -> list:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), Base.metadata)


def test_sqlite_migrations_match_models(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    migrate(engine)
    assert _diff(engine) == []


@pytest.mark.services
def test_postgres_migrations_match_models(pg_schema: str) -> None:
    engine = make_engine(PG, schema=pg_schema)
    migrate(engine)
    assert _diff(engine) == []
    with engine.connect() as conn:
        tables = (
            conn.execute(
                text("select table_name from information_schema.tables where table_schema=:s"),
                {"s": pg_schema},
            )
            .scalars()
            .all()
        )
    assert {
        "users",
        "api_tokens",
        "datasets",
        "experiments",
        "stages",
        "metrics",
        "artifacts",
        "alembic_version",
    } <= set(tables)
