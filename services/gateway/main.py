"""The gateway's app factory. `uvicorn services.gateway.main:app` serves the default app.

`create_app(settings)` wires the database, the dispatcher (Celery, by task name), the two
buckets and the dataset cache onto `app.state.gateway`; tests pass their own settings.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from anyio import CapacityLimiter, to_thread
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from distillery.db import make_session_factory
from distillery.db.session import engine_for, migrate_locked
from distillery.s3 import make_storage
from distillery.settings import Settings, get_settings
from distillery.spec import ECHO_CHARS, short
from distillery.spec import field_path as spec_field_path
from distillery.storage import Storage
from services.celery_app import make_celery
from services.dispatch import CeleryDispatcher, Dispatcher
from services.gateway import openapi
from services.gateway.deps import GatewayState
from services.gateway.docs import mount_docs
from services.gateway.limits import BodySizeLimit
from services.gateway.routes import datasets, experiments, health, queue, shares
from services.gateway.token_cache import TokenCache

# uvicorn's workers share one listening socket, and libuv (uvloop) accepts every pending connection
# in one go: one worker took 44 of 50 keep-alive clients in `benchmarks/gateway_load.py` while the
# other sat idle. One connection per wake-up lets the other workers take their share (28/22).
# libuv reads it at the first accept, after this import (set it to 0 to turn it off).
os.environ.setdefault("UV_TCP_SINGLE_ACCEPT", "1")

DESCRIPTION = """\
Submit segmentation-distillation experiments to the team's shared queue, register datasets
and follow progress. Every call except `/health` and `/ready` needs `Authorization: Bearer
<token>` (`distillery admin create-user NAME` prints one).
"""


def field_path(loc: tuple[Any, ...] | list[Any], body: Any = None) -> str:
    """`("body", "teacher", "train", "lr")` -> `teacher.train.lr` (the spec's own dotted path,
    without pydantic's union branch names, see `distillery.spec.field_path`)."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "form"):
        source, parts = parts[0], parts[1:]
        if source == "body" and isinstance(body, dict):
            return spec_field_path(parts, body) or "(body)"
    return ".".join(str(p) for p in parts) or "(body)"


#: An error message is cut to this many characters (it may quote user input).
MAX_MESSAGE = 2000
#: A whole-spec check's message starts with the dotted field it is about.
NAMED_FIELD = re.compile(r"^(?:Value error, )?([A-Za-z_]\w*(?:\.\w+)+)(?=[: ])")


def _echo(value: Any) -> Any:
    """A bad value as a 422 may quote it: short scalars as they are, anything else (long
    strings, huge integers, NaN) as a short prefix of its repr."""
    if isinstance(value, bool) or (isinstance(value, float) and math.isfinite(value)):
        return value
    if isinstance(value, int) and abs(value) < 10**30:
        return value
    if isinstance(value, str) and len(value) <= ECHO_CHARS:
        return value
    return short(value)


async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 body plus a dotted `field` per error; whole-spec inputs are left out, a bad
    value is echoed as a short prefix only (`distillery.spec.short`)."""
    errors = []
    for err in exc.errors()[:100]:
        err = dict(err)
        ctx = err.pop("ctx", None) or {}
        err.pop("url", None)
        value = err.pop("input", None)
        err = jsonable_encoder(err)
        err["msg"] = str(err.get("msg", ""))[:MAX_MESSAGE]
        err["field"] = field_path(err.get("loc", ()), exc.body)
        if err["field"] == "(body)" and (named := NAMED_FIELD.match(err["msg"])):
            err["field"] = named.group(1)  # a whole-spec check that names its field
        # constraints (`le`, `expected`) and plans stay; a validator's exception object goes
        kept = {
            k: _echo(v) if isinstance(v, str | int | float) else v
            for k, v in ctx.items()
            if not isinstance(v, BaseException)
        }
        if kept:
            err["ctx"] = jsonable_encoder(kept)
        if value is not None and not isinstance(value, dict | list):
            err["input"] = _echo(value)
        errors.append(err)
    return JSONResponse(status_code=422, content={"detail": errors})


def create_app(
    settings: Settings | None = None,
    *,
    dispatcher: Dispatcher | None = None,
    datasets_storage: Storage | None = None,
    artifacts_storage: Storage | None = None,
    migrate_on_start: bool | None = None,
) -> FastAPI:
    """Build the gateway. Nothing connects until the first request (or the startup migration)."""
    settings = settings or get_settings()
    # one connection per request thread and per upload thread
    pool_size = settings.gateway_concurrency + settings.gateway_upload_concurrency
    engine = engine_for(settings, pool_size=pool_size)
    read_engine = engine.execution_options(isolation_level="AUTOCOMMIT")
    state = GatewayState(
        settings=settings,
        engine=engine,
        session_factory=make_session_factory(engine),
        read_engine=read_engine,
        read_session_factory=make_session_factory(read_engine),
        dispatcher=dispatcher or CeleryDispatcher(make_celery(settings)),
        datasets_storage=datasets_storage or make_storage(settings, settings.datasets_bucket),
        artifacts_storage=artifacts_storage or make_storage(settings, settings.artifacts_bucket),
        tokens=TokenCache(settings.token_cache_s),
        uploads=CapacityLimiter(settings.gateway_upload_concurrency),
    )
    do_migrate = settings.migrate_on_start if migrate_on_start is None else migrate_on_start

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if do_migrate:
            migrate_locked(engine, settings.database_schema or None)
        # Sync routes and dependencies run on this many threads (anyio's default is 40).
        to_thread.current_default_thread_limiter().total_tokens = settings.gateway_concurrency
        yield
        engine.dispose()

    app = FastAPI(
        title="Distillery gateway",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by mount_docs, with local assets
        redoc_url=None,
    )
    mount_docs(app)
    app.state.gateway = state
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_request_bytes,
        max_upload_bytes=settings.max_upload_bytes,
    )
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.include_router(health.router)
    app.include_router(experiments.router)
    app.include_router(shares.router)
    app.include_router(datasets.router)
    app.include_router(queue.router)
    openapi.install(app)
    return app


def __getattr__(name: str) -> FastAPI:
    """`services.gateway.main:app`: built on first access, from the environment's settings."""
    if name == "app":
        global app
        app = create_app()
        return app
    raise AttributeError(name)
