"""Engines, sessions and schema migration (Alembic) for Postgres and SQLite."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, exc, text
from sqlalchemy.orm import Session, sessionmaker

from distillery.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"
#: Postgres advisory-lock key held while migrating (several processes may start at once).
MIGRATION_LOCK = 0x0D157111

#: A pooled connection that sat idle longer than this is pinged before it is handed out (a
#: restarted database or a proxy's idle timeout drops connections). A busy pool is not pinged:
#: a ping per checkout was a round trip on every request.
PING_IDLE_S = 10.0


def make_engine(url: str, schema: str | None = None, pool_size: int | None = None) -> Engine:
    """An engine for `url`. `schema` (Postgres only) puts every table in that schema (tests).

    `pool_size` (Postgres): connections kept open, with as many again allowed in bursts; a
    process that runs up to N queries at once wants N, or connections beyond the pool are opened
    and closed per request (a backend start each on the database)."""
    kwargs: dict = {}
    if pool_size is not None and not url.startswith("sqlite"):
        kwargs.update(pool_size=pool_size, max_overflow=pool_size)
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    elif schema:
        kwargs["connect_args"] = {"options": f"-csearch_path={schema}"}
    engine = create_engine(url, **kwargs)
    ping_idle_connections(engine, PING_IDLE_S)
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

    return engine


def ping_idle_connections(engine: Engine, idle_s: float) -> None:
    """Ping a pooled connection on checkout only if it was idle more than `idle_s` seconds; a
    dead one is replaced (SQLAlchemy retries the checkout with a fresh connection)."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn: Any, record: Any) -> None:
        record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("checked_in_at")
        if since is None or time.monotonic() - since <= idle_s:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except Exception as e:  # noqa: BLE001 - any failure means the connection is gone
            raise exc.DisconnectionError(f"stale pooled connection: {e}") from e
        if not alive:
            raise exc.DisconnectionError("stale pooled connection")


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


def engine_for(settings: Settings, pool_size: int | None = None) -> Engine:
    """The engine of the platform's `Settings` (its URL, in its schema); `pool_size` as in
    `make_engine`."""
    return make_engine(
        settings.database_url, schema=settings.database_schema or None, pool_size=pool_size
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
