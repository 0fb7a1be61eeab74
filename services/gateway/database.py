"""Opening the gateway's database: engine for the configured schema, migrations under a lock."""

from __future__ import annotations

import re

from sqlalchemy import Engine, text

from distillery.db import make_engine, migrate
from distillery.settings import Settings

#: Postgres advisory-lock key held while migrating (several gateway processes may start at once).
MIGRATION_LOCK = 0x0D157111


def engine_for(settings: Settings) -> Engine:
    """The gateway's engine: one pooled connection per request it serves at once."""
    return make_engine(
        settings.database_url,
        schema=settings.database_schema or None,
        pool_size=settings.gateway_concurrency,
    )


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
