"""Pooled connections: pinged only after sitting idle, and a dead one is replaced."""

import pytest
from sqlalchemy import create_engine, text

from distillery.db import make_engine
from distillery.db.session import ping_idle_connections

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.mark.services
def test_an_idle_connection_killed_by_the_server_is_replaced_on_checkout() -> None:
    engine = create_engine(PG)
    ping_idle_connections(engine, idle_s=0.0)  # every reuse counts as idle
    admin = make_engine(PG)
    try:
        with engine.connect() as conn:
            first = conn.execute(text("select pg_backend_pid()")).scalar()
        with admin.connect() as conn:  # the database drops the pooled connection
            conn.execute(text("select pg_terminate_backend(:p)"), {"p": first})
        with engine.connect() as conn:
            second = conn.execute(text("select pg_backend_pid()")).scalar()
        assert second != first
    finally:
        engine.dispose()
        admin.dispose()


@pytest.mark.services
def test_a_busy_pool_reuses_connections_without_a_ping() -> None:
    engine = create_engine(PG)
    ping_idle_connections(engine, idle_s=3600.0)
    pings = []
    engine.dialect.do_ping = lambda dbapi_conn: pings.append(dbapi_conn) or True
    try:
        for _ in range(3):
            with engine.connect() as conn:
                conn.execute(text("select 1"))
        assert pings == []
        assert engine.pool.checkedin() == 1  # one connection, reused
    finally:
        engine.dispose()
