"""The gateway in-process (FastAPI TestClient) on the test's real Postgres, Redis and S3."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from distillery.settings import Settings
from services.gateway.main import create_app

from .helpers import auth


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def tokens(make_user: Callable[..., str]) -> dict[str, str]:
    """Tokens of alice and bob (team members) and root (an admin)."""
    return {"alice": make_user("alice"), "bob": make_user("bob"), "root": make_user("root", True)}


@pytest.fixture
def as_user(client: TestClient, tokens: dict[str, str]) -> Callable[[str], Any]:
    """`as_user("alice").get(...)`: the client with that user's token."""

    class _As:
        def __init__(self, name: str) -> None:
            self.headers = auth(tokens[name])

        def __getattr__(self, method: str) -> Callable[..., Any]:
            fn = getattr(client, method)
            return lambda *a, **kw: fn(*a, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    return _As
