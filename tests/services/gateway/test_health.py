"""`/health` and `/ready` (no auth): readiness names each dependency that is down."""

from __future__ import annotations

from fastapi.testclient import TestClient

from services.gateway.main import create_app
from tests.support.devstack import free_port


def test_health_and_ready(client):
    assert client.get("/health").json() == {"status": "ok"}
    r = client.get("/ready")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "status": "ready",
        "checks": {"database": "ok", "broker": "ok", "storage": "ok"},
    }


def test_ready_is_503_naming_what_is_down(settings):
    closed = free_port()  # nothing listens there
    down = settings.model_copy(
        update={
            "database_url": f"postgresql+psycopg://postgres@127.0.0.1:{closed}/test",
            "broker_url": f"redis://127.0.0.1:{closed}/0",
        }
    )
    with TestClient(create_app(down)) as c:
        r = c.get("/ready")
    assert r.status_code == 503
    checks = r.json()["checks"]
    assert r.json()["status"] == "unavailable"
    assert checks["database"].startswith("down:") and checks["broker"].startswith("down:")
    assert checks["storage"] == "ok"

    no_bucket = settings.model_copy(update={"artifacts_bucket": "no-such-bucket-here"})
    with TestClient(create_app(no_bucket)) as c:
        r = c.get("/ready")
    assert r.status_code == 503
    assert r.json()["checks"] == {
        "database": "ok",
        "broker": "ok",
        "storage": "down: RuntimeError: bucket 'no-such-bucket-here' does not exist",
    }

    s3_down = settings.model_copy(update={"s3_endpoint": f"127.0.0.1:{closed}"})
    with TestClient(create_app(s3_down)) as c:
        r = c.get("/ready")
    assert r.status_code == 503 and r.json()["checks"]["storage"].startswith("down:")
    assert r.json()["checks"]["database"] == "ok"


def test_openapi_docs(client):
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/experiments", "/experiments/{experiment_id}/cancel", "/datasets", "/queue"} <= set(
        paths
    )


def test_startup_migrates_when_asked(settings, db_url):
    import uuid

    from sqlalchemy import inspect, text

    from distillery.db import make_engine

    schema = f"t_{uuid.uuid4().hex[:12]}"  # does not exist yet: created and migrated
    fresh = settings.model_copy(update={"database_schema": schema, "migrate_on_start": True})
    admin = make_engine(db_url)
    try:
        with TestClient(create_app(fresh)) as c:
            assert c.get("/ready").status_code == 200
        engine = make_engine(db_url, schema=schema)
        tables = set(inspect(engine).get_table_names(schema=schema))
        engine.dispose()
        assert {"experiments", "stages", "datasets", "alembic_version"} <= tables
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
