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


def _indexes(engine, table: str) -> set[str]:
    from sqlalchemy import inspect

    return {ix["name"] for ix in inspect(engine).get_indexes(table)}


@pytest.mark.services
def test_postgres_0003_gateway_indexes_up_and_down(pg_schema: str) -> None:
    """0003 applies on a populated 0002 database, the list and queue queries can use its
    indexes, and it downgrades back to the single-column indexes."""
    from alembic import command

    from distillery.db.session import alembic_config

    engine = make_engine(PG, schema=pg_schema)
    migrate(engine, "0002")
    with engine.begin() as conn:
        conn.execute(
            text("insert into users (name, is_admin, created_at) values ('a', false, now())")
        )
        conn.execute(
            text(
                "insert into experiments (id, name, spec, status, owner_id, cancel_requested, "
                "created_at, updated_at) values ('e1', 'x', '{}', 'queued', 1, false, now(), now())"
            )
        )
    migrate(engine)
    assert {
        "ix_experiments_created_at_id",
        "ix_experiments_status_created_at_id",
        "ix_experiments_owner_id_created_at_id",
    } <= _indexes(engine, "experiments")
    assert "ix_experiments_status" not in _indexes(engine, "experiments")
    assert "ix_stages_status_enqueued_at" in _indexes(engine, "stages")
    assert "ix_metrics_stage_id_id" in _indexes(engine, "metrics")
    with engine.connect() as conn:
        conn.execute(text("set enable_seqscan = off"))
        plan = "\n".join(
            conn.execute(
                text(
                    "explain select id from experiments where status = 'queued' "
                    "order by created_at desc, id desc limit 20"
                )
            ).scalars()
        )
        assert "ix_experiments_status_created_at_id" in plan, plan
        assert "Sort" not in plan, plan  # the index gives the order
        assert conn.execute(text("select count(*) from experiments")).scalar() == 1

    command.downgrade(alembic_config(engine), "0002")
    assert "ix_experiments_status" in _indexes(engine, "experiments")
    assert "ix_experiments_status_created_at_id" not in _indexes(engine, "experiments")
    assert "ix_metrics_stage_id" in _indexes(engine, "metrics")
    migrate(engine)
    assert _diff(engine) == []
    engine.dispose()
