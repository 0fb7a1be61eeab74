"""FastAPI dependencies as `Annotated` types: `def route(read: ReadDep, user: CurrentUser)`.

Everything the routes use lives on `app.state.gateway` (a `GatewayState` built by
`main.create_app`), so one process can hold several apps with different settings (tests).

FastAPI solves every dependency of a route on every request, recursively (each level a call of
`solve_dependencies`, with its own parameter and cache bookkeeping), so these are flat: each
takes the `Request` and nothing else, and `CurrentUser` is the bearer scheme itself (one
dependency, still the `HTTPBearer` security scheme in the OpenAPI document). Dependencies that
do no I/O are `async def`: FastAPI runs a plain `def` dependency in its thread pool, a hand-off
per dependency per request. Routes that only read take `RowsDep` (Core statements: plain
connections) or `ReadDep` (the ORM: sessions), both on autocommit connections, so a read costs
no BEGIN/ROLLBACK round trips (Postgres runs each statement in its own snapshot either way under
READ COMMITTED) and is closed without I/O. Routes that write take
`SessionDep` (a transaction, committed by the route), or `StateDep` and open their session in
the route (`POST /experiments`: no thread-pool hand-offs for entering and leaving a `yield`
dependency).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Annotated

from anyio import CapacityLimiter
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from distillery.db import User
from distillery.db.auth import authenticate, hash_token
from distillery.settings import Settings
from distillery.storage import Storage
from services.dispatch import Dispatcher
from services.gateway.token_cache import TokenCache


@dataclass
class GatewayState:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    #: The engine on autocommit connections (same pool), for routes that only read.
    read_engine: Engine
    #: Sessions on `read_engine`, for reads through the ORM.
    read_session_factory: sessionmaker[Session]
    dispatcher: Dispatcher
    datasets_storage: Storage
    artifacts_storage: Storage
    tokens: TokenCache
    #: The threads dataset uploads run on (`Settings.gateway_upload_concurrency`), apart from
    #: the default thread pool of the short requests (`Settings.gateway_concurrency`).
    uploads: CapacityLimiter


def state_of(request: Request) -> GatewayState:
    """The app's `GatewayState` (set by `main.create_app`)."""
    return request.app.state.gateway


async def get_state(request: Request) -> GatewayState:
    return state_of(request)


StateDep = Annotated[GatewayState, Depends(get_state)]


async def get_settings(request: Request) -> Settings:
    return state_of(request).settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(request: Request) -> Iterator[Session]:
    with state_of(request).session_factory() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


async def get_reader(request: Request) -> sessionmaker[Session]:
    """Sessions that never open a transaction: `with read() as session:` in the route (a
    `yield` dependency costs more per request than the query it wraps)."""
    return state_of(request).read_session_factory


ReadDep = Annotated[sessionmaker[Session], Depends(get_reader)]


async def get_row_reader(request: Request) -> Callable[[], AbstractContextManager[Connection]]:
    """Autocommit connections: `with rows() as conn:` in a route whose statements are Core
    (`services.gateway.queries`); no ORM session around them (a session's setup and close
    cost about as much as a small query)."""
    return state_of(request).read_engine.connect


RowsDep = Annotated[Callable[[], AbstractContextManager[Connection]], Depends(get_row_reader)]


async def get_dispatcher(request: Request) -> Dispatcher:
    return state_of(request).dispatcher


DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]


async def get_datasets_storage(request: Request) -> Storage:
    return state_of(request).datasets_storage


async def get_artifacts_storage(request: Request) -> Storage:
    return state_of(request).artifacts_storage


DatasetStorageDep = Annotated[Storage, Depends(get_datasets_storage)]
ArtifactStorageDep = Annotated[Storage, Depends(get_artifacts_storage)]


def _lookup_token(state: GatewayState, token: str) -> User | None:
    with state.read_session_factory() as session:
        return authenticate(session, token)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"}
    )


class BearerUser(HTTPBearer):
    """The `HTTPBearer` security scheme that answers with the token's `User`: one dependency
    per request where a scheme plus a user lookup were two levels."""

    async def __call__(self, request: Request) -> User:  # type: ignore[override]
        """The user whose token is in `Authorization: Bearer`; 401 if it is missing or unknown.

        A token seen in the last `settings.token_cache_s` seconds is not looked up again."""
        scheme, token = get_authorization_scheme_param(request.headers.get("Authorization"))
        if not token or scheme.lower() != "bearer":
            raise _unauthorized("missing token: send Authorization: Bearer <token>")
        state = state_of(request)
        token_hash = hash_token(token)
        user = state.tokens.get(token_hash)
        if user is None:
            # One lookup at a time: when an entry expires under load, the requests that find it
            # gone wait for the first one's lookup instead of all reading (and each refreshing
            # `last_used_at` of) the same row.
            async with state.tokens.lookup_lock:
                user = state.tokens.get(token_hash)
                if user is None:
                    user = await run_in_threadpool(_lookup_token, state, token)
                    if user is not None:
                        state.tokens.put(token_hash, user)
        if user is None:
            raise _unauthorized("unknown token")
        return user


#: `scheme_name` keeps the OpenAPI document's security scheme named `HTTPBearer`.
get_current_user = BearerUser(
    scheme_name="HTTPBearer",
    auto_error=False,
    description="`Authorization: Bearer <token>`",
)

CurrentUser = Annotated[User, Depends(get_current_user)]


def ensure_owner_or_admin(user: User, owner_id: int | None, what: str) -> None:
    """403 unless `user` owns the thing or is an admin."""
    if not user.is_admin and user.id != owner_id:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"only the owner of {what} or an admin may do this"
        )
