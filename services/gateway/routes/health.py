"""`/health` (the process is alive) and `/ready` (its dependencies answer). No auth."""

from __future__ import annotations

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from services.gateway.deps import StateDep
from services.gateway.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
async def health() -> Health:
    """The process answers (on the event loop: not behind the request threads, which a stalled
    database may hold)."""
    return Health()


def _check_database(state: StateDep) -> None:
    with state.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _check_broker(state: StateDep) -> None:
    url = state.settings.broker_url
    if not url.startswith(("redis://", "rediss://")):
        return
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    finally:
        client.close()


def _check_storage(state: StateDep) -> None:
    for storage in (state.datasets_storage, state.artifacts_storage):
        exists = getattr(storage, "bucket_exists", None)
        if exists is not None and not exists():
            raise RuntimeError(f"bucket {storage.bucket!r} does not exist")


@router.get(
    "/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "a dependency is down"}},
)
def ready(state: StateDep) -> Readiness | JSONResponse:
    """Database, broker (Redis ping) and storage (both buckets exist) are reachable; 503 names
    what is down."""
    checks: dict[str, str] = {}
    for name, check in (
        ("database", _check_database),
        ("broker", _check_broker),
        ("storage", _check_storage),
    ):
        try:
            check(state)
            checks[name] = "ok"
        except Exception as e:  # noqa: BLE001 - any failure means "not ready", reported by name
            first_line = (str(e).splitlines() or [""])[0][:300]
            checks[name] = f"down: {type(e).__name__}: {first_line}"
    if all(v == "ok" for v in checks.values()):
        return Readiness(status="ready", checks=checks)
    body = Readiness(status="unavailable", checks=checks)
    return JSONResponse(status_code=503, content=body.model_dump())
