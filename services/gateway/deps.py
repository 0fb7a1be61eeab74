"""FastAPI dependencies as `Annotated` types: `def route(session: SessionDep, user: CurrentUser)`.

Everything the routes use lives on `app.state.gateway` (a `GatewayState` built by
`main.create_app`), so one process can hold several apps with different settings (tests).

Dependencies that do no I/O are `async def`: FastAPI runs a plain `def` dependency in its thread
pool, a hand-off per dependency per request. Routes that only read take `ReadDep`: sessions
on autocommit connections, so a read costs no BEGIN/ROLLBACK round trips (Postgres
runs each statement in its own snapshot either way under READ COMMITTED) and is closed without
I/O. Routes that write take `SessionDep` (a transaction, committed by the route).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
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
    #: Sessions on autocommit connections (same pool), for routes that only read.
    read_session_factory: sessionmaker[Session]
    dispatcher: Dispatcher
    datasets_storage: Storage
    artifacts_storage: Storage
    tokens: TokenCache


async def get_state(request: Request) -> GatewayState:
    return request.app.state.gateway


StateDep = Annotated[GatewayState, Depends(get_state)]


async def get_settings(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(state: StateDep) -> Iterator[Session]:
    with state.session_factory() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


async def get_reader(state: StateDep) -> sessionmaker[Session]:
    """Sessions that never open a transaction: `with read() as session:` in the route (a
    `yield` dependency costs more per request than the query it wraps)."""
    return state.read_session_factory


ReadDep = Annotated[sessionmaker[Session], Depends(get_reader)]


async def get_dispatcher(state: StateDep) -> Dispatcher:
    return state.dispatcher


DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]


async def get_datasets_storage(state: StateDep) -> Storage:
    return state.datasets_storage


async def get_artifacts_storage(state: StateDep) -> Storage:
    return state.artifacts_storage


DatasetStorageDep = Annotated[Storage, Depends(get_datasets_storage)]
ArtifactStorageDep = Annotated[Storage, Depends(get_artifacts_storage)]

bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <token>`")


def _lookup_token(state: GatewayState, token: str) -> User | None:
    with state.read_session_factory() as session:
        return authenticate(session, token)


async def get_current_user(
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> User:
    """The user whose token is in `Authorization: Bearer`; 401 if it is missing or unknown.

    A token seen in the last `settings.token_cache_s` seconds is not looked up again."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing token: send Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    token_hash = hash_token(credentials.credentials)
    user = state.tokens.get(token_hash)
    if user is None:
        # One lookup at a time: when an entry expires under load, the requests that find it
        # gone wait for the first one's lookup instead of all reading (and each refreshing
        # `last_used_at` of) the same row.
        async with state.tokens.lookup_lock:
            user = state.tokens.get(token_hash)
            if user is None:
                user = await run_in_threadpool(_lookup_token, state, credentials.credentials)
                if user is not None:
                    state.tokens.put(token_hash, user)
    if user is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "unknown token", headers={"WWW-Authenticate": "Bearer"}
        )
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


def ensure_owner_or_admin(user: User, owner_id: int | None, what: str) -> None:
    """403 unless `user` owns the thing or is an admin."""
    if not user.is_admin and user.id != owner_id:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"only the owner of {what} or an admin may do this"
        )
