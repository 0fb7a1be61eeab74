"""`distillery admin create-user`: migrates if needed, prints a working token, stores its hash."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from typer.testing import CliRunner

from distillery.cli.main import app
from distillery.db import ApiToken, User, make_engine, make_session_factory
from distillery.db.auth import hash_token
from services.gateway.main import create_app


@pytest.fixture
def empty_schema(db_url):
    """A schema with no tables at all (the command must migrate it)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
    engine.dispose()


def test_create_user_prints_a_token_that_works(db_url, empty_schema, settings):
    env = {"DISTILLERY_DATABASE_URL": db_url, "DISTILLERY_DATABASE_SCHEMA": empty_schema}
    runner = CliRunner(env=env)
    r = runner.invoke(app, ["admin", "create-user", "grace", "--admin"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    token = r.stdout.strip()
    assert len(token) >= 40 and "\n" not in token
    assert "shown once" in r.stderr

    engine = make_engine(db_url, schema=empty_schema)
    with make_session_factory(engine)() as s:
        user = s.scalar(select(User).where(User.name == "grace"))
        assert user.is_admin
        hashes = list(s.scalars(select(ApiToken.token_hash).where(ApiToken.user_id == user.id)))
    engine.dispose()
    assert hashes == [hash_token(token)] and token not in hashes

    # The token authenticates against a gateway on that database.
    gw = create_app(settings.model_copy(update={"database_schema": empty_schema}))
    with TestClient(gw) as c:
        ok = c.get("/experiments", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200
        assert c.get("/experiments", headers={"Authorization": "Bearer x"}).status_code == 401

    r = runner.invoke(app, ["admin", "create-user", "grace"])
    assert r.exit_code == 1 and "already exists" in r.stderr
    r = runner.invoke(app, ["admin", "create-token", "grace"])
    assert r.exit_code == 0 and r.stdout.strip() != token
    r = runner.invoke(app, ["admin", "create-token", "nobody"])
    assert r.exit_code == 1 and "no user" in r.stderr
