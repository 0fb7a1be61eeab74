"""Alembic environment: the engine comes from `config.attributes["engine"]` (programmatic use) or
from DISTILLERY_DATABASE_URL (the `alembic` command, with alembic.ini at the repo root)."""

from __future__ import annotations

import os

from alembic import context

from distillery.db.models import Base
from distillery.db.session import make_engine

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = config.attributes.get("engine")
    if engine is None:
        url = os.environ.get("DISTILLERY_DATABASE_URL")
        if not url:
            raise RuntimeError("set DISTILLERY_DATABASE_URL to the database to migrate")
        engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations_online()
