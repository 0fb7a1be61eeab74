"""FastAPI dependencies as `Annotated` types: `def route(session: SessionDep, user: CurrentUser)`.

Everything the routes use lives on `app.state.gateway` (a `GatewayState` built by
`main.create_app`), so one process can hold several apps with different settings (tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from distillery.db import User
from distillery.db.auth import authenticate
from distillery.s3 import DatasetCache
from distillery.settings import Settings
from distillery.storage import Storage
from services.dispatch import Dispatcher


@dataclass
class GatewayState:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    dispatcher: Dispatcher
    datasets_storage: Storage
    artifacts_storage: Storage
    dataset_cache: DatasetCache


def get_state(request: Request) -> GatewayState:
    return request.app.state.gateway


StateDep = Annotated[GatewayState, Depends(get_state)]


def get_settings(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(state: StateDep) -> Iterator[Session]:
    with state.session_factory() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_dispatcher(state: StateDep) -> Dispatcher:
    return state.dispatcher


DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]


def get_datasets_storage(state: StateDep) -> Storage:
    return state.datasets_storage


def get_artifacts_storage(state: StateDep) -> Storage:
    return state.artifacts_storage


def get_dataset_cache(state: StateDep) -> DatasetCache:
    return state.dataset_cache


DatasetStorageDep = Annotated[Storage, Depends(get_datasets_storage)]
ArtifactStorageDep = Annotated[Storage, Depends(get_artifacts_storage)]
DatasetCacheDep = Annotated[DatasetCache, Depends(get_dataset_cache)]

bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <token>`")


def get_current_user(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> User:
    """The user whose token is in `Authorization: Bearer`; 401 if it is missing or unknown."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing token: send Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    user = authenticate(session, credentials.credentials)
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
