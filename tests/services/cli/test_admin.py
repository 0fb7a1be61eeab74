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


def test_tokens_expire_are_listed_without_values_and_can_be_revoked(db_url, empty_schema, settings):
    from datetime import timedelta

    from distillery.db.models import utcnow

    env = {"DISTILLERY_DATABASE_URL": db_url, "DISTILLERY_DATABASE_SCHEMA": empty_schema}
    runner = CliRunner(env=env)
    r = runner.invoke(app, ["admin", "create-user", "ada"], catch_exceptions=False)
    first = r.stdout.strip()
    r = runner.invoke(app, ["admin", "create-token", "ada", "--expires-in-days", "0"])
    forever = r.stdout.strip()
    r = runner.invoke(app, ["admin", "create-token", "ada", "--expires-in-days", "1"])
    short_lived = r.stdout.strip()

    engine = make_engine(db_url, schema=empty_schema)
    sessions = make_session_factory(engine)
    with sessions() as s:
        rows = list(s.scalars(select(ApiToken).order_by(ApiToken.id)))
        ids = [t.id for t in rows]
        days = [(t.expires_at - t.created_at).days if t.expires_at else None for t in rows]
    assert days == [89, None, 0] or days == [90, None, 1]  # default 90 days, never, 1 day

    # token_cache_s=0: a revoked token stops at once (a gateway trusts one it saw that long)
    gw = create_app(
        settings.model_copy(update={"database_schema": empty_schema, "token_cache_s": 0})
    )
    with TestClient(gw) as c:

        def status(token: str) -> int:
            return c.get("/queue", headers={"Authorization": f"Bearer {token}"}).status_code

        assert [status(t) for t in (first, forever, short_lived)] == [200, 200, 200]
        r = runner.invoke(app, ["admin", "list-tokens", "ada"], catch_exceptions=False)
        assert r.exit_code == 0
        lines = r.stdout.strip().splitlines()
        assert lines[0].split() == ["id", "created", "last", "used", "expires", "state"]
        assert len(lines) == 4 and all(ln.endswith("active") for ln in lines[1:])
        assert not any(t in r.stdout for t in (first, forever, short_lived))
        with sessions() as s:
            assert not any(h in r.stdout for h in s.scalars(select(ApiToken.token_hash)))

        r = runner.invoke(app, ["admin", "revoke-token", str(ids[1])], catch_exceptions=False)
        assert r.exit_code == 0 and "revoked token" in r.stderr and "ada" in r.stderr
        assert status(forever) == 401
        with sessions.begin() as s:  # the 1-day token's day is over
            s.get(ApiToken, ids[2]).expires_at = utcnow() - timedelta(seconds=1)
        assert status(short_lived) == 401 and status(first) == 200
        r = runner.invoke(app, ["admin", "list-tokens", "ada"])
        states = [ln.split()[-1] for ln in r.stdout.strip().splitlines()[1:]]
        assert states == ["active", "revoked", "expired"]
    engine.dispose()
    r = runner.invoke(app, ["admin", "revoke-token", "999999"])
    assert r.exit_code == 1 and "no token with id 999999" in r.stderr


def test_admin_init_migrates_and_creates_the_buckets_then_the_gateway_is_ready(
    db_url, empty_schema, s3_server, settings
):
    from distillery.s3 import make_client

    tag = uuid.uuid4().hex[:12]
    datasets, artifacts = f"init-d-{tag}", f"init-a-{tag}"
    env = {
        "DISTILLERY_DATABASE_URL": db_url,
        "DISTILLERY_DATABASE_SCHEMA": empty_schema,
        "DISTILLERY_S3_ENDPOINT": s3_server.endpoint,
        "DISTILLERY_S3_ACCESS_KEY": s3_server.access_key,
        "DISTILLERY_S3_SECRET_KEY": s3_server.secret_key,
        "DISTILLERY_S3_SECURE": "false",
        "DISTILLERY_DATASETS_BUCKET": datasets,
        "DISTILLERY_ARTIFACTS_BUCKET": artifacts,
    }
    client = make_client(settings)
    try:
        r = CliRunner(env=env).invoke(app, ["admin", "init"], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        assert f"bucket {datasets}: created" in r.stderr
        assert client.bucket_exists(datasets) and client.bucket_exists(artifacts)
        # Again: nothing to do, says so.
        r = CliRunner(env=env).invoke(app, ["admin", "init"], catch_exceptions=False)
        assert r.exit_code == 0 and f"bucket {artifacts}: exists" in r.stderr
        ready_settings = settings.model_copy(
            update={
                "database_schema": empty_schema,
                "datasets_bucket": datasets,
                "artifacts_bucket": artifacts,
            }
        )
        with TestClient(create_app(ready_settings)) as c:
            ready = c.get("/ready")
            assert ready.status_code == 200, ready.text
    finally:
        for bucket in (datasets, artifacts):
            if client.bucket_exists(bucket):
                client.remove_bucket(bucket)


def test_admin_init_names_what_is_down(db_url, empty_schema):
    env = {
        "DISTILLERY_DATABASE_URL": db_url,
        "DISTILLERY_DATABASE_SCHEMA": empty_schema,
        "DISTILLERY_S3_ENDPOINT": "127.0.0.1:9",  # nothing listens on the discard port
    }
    r = CliRunner(env=env).invoke(app, ["admin", "init"], catch_exceptions=False)
    assert r.exit_code == 1
    assert r.stderr.startswith("error: ") and "127.0.0.1" in r.stderr
