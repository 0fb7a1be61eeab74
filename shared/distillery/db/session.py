"""Engines, sessions and schema migration (Alembic) for Postgres and SQLite."""

from __future__ import annotations

import re
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from distillery.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"
#: Postgres advisory-lock key held while migrating (several processes may start at once).
MIGRATION_LOCK = 0x0D157111


def make_engine(url: str, schema: str | None = None) -> Engine:
    """An engine for `url`. `schema` (Postgres only) puts every table in that schema (tests)."""
    kwargs: dict = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    elif schema:
        kwargs["connect_args"] = {"options": f"-csearch_path={schema}"}
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(engine: Engine | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if engine is not None:
        cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` (`alembic upgrade head`)."""
    command.upgrade(alembic_config(engine), revision)


def engine_for(settings: Settings) -> Engine:
    """The engine of the platform's `Settings` (its URL, in its schema)."""
    return make_engine(settings.database_url, schema=settings.database_schema or None)


def migrate_locked(engine: Engine, schema: str | None = None) -> None:
    """`alembic upgrade head`, creating `schema` first; one process at a time on Postgres."""
    if engine.dialect.name != "postgresql":
        migrate(engine)
        return
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
        try:
            if schema:
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", schema):
                    raise ValueError(f"database_schema {schema!r} is not a plain identifier")
                conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
                conn.commit()
            migrate(engine)
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
            conn.commit()
