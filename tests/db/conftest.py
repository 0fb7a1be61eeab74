import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from distillery.db import make_engine

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh Postgres schema for one test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = make_engine(PG)
    with admin.begin() as conn:
        conn.execute(text(f'create schema "{name}"'))
    yield name
    with admin.begin() as conn:
        conn.execute(text(f'drop schema "{name}" cascade'))
    admin.dispose()
