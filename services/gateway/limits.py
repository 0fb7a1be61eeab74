"""What one client may ask of the shared gateway: request body size, and how many experiments a
user may have waiting or running and submit per minute.

- `BodySizeLimit` (ASGI middleware): a body over `Settings.max_request_bytes` (an upload to
  `POST /datasets`: `Settings.max_upload_bytes`) is a 413, refused from `Content-Length` before
  it is read, or as soon as a streamed body passes the limit. A NUL character in the path or a
  query parameter (Postgres text cannot hold one) is a 422 naming the parameter.
- `check_submission_allowed`: 429 when the user already has `max_active_experiments`
  queued or running, or submitted `max_submissions_per_minute` in the last minute. Both are
  counted in Postgres (so every gateway process agrees), under a lock on the user's row (so
  concurrent submissions of one user cannot overshoot).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import HTTPException, status
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from distillery.db import Experiment, StageStatus, User
from distillery.db.models import utcnow
from distillery.settings import Settings

#: The largest `offset` a list accepts (a page beyond it is certainly empty).
MAX_OFFSET = 1_000_000_000
ACTIVE = (StageStatus.queued, StageStatus.running)


class BodySizeLimit:
    """413 for a request body over the limit (see the module docstring)."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_upload_bytes: int) -> None:
        self.app, self.max_bytes, self.max_upload_bytes = app, max_bytes, max_upload_bytes

    def limit_for(self, scope: Scope) -> int:
        if scope["method"] == "POST" and scope["path"].rstrip("/") == "/datasets":
            return self.max_upload_bytes
        return self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope["path"] or b"%00" in scope["query_string"]:
            await _nul_in(send, scope)
            return
        limit = self.limit_for(scope)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _too_large(send, limit)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, _message(limit))
            return message

        await self.app(scope, counted, send)


def _message(limit: int) -> str:
    return f"request body too large: the limit is {limit} bytes"


async def _too_large(send: Send, limit: int) -> None:
    await _send_json(send, 413, {"detail": _message(limit)}, [(b"connection", b"close")])


async def _send_json(
    send: Send, status_code: int, payload: Any, headers: list[tuple[bytes, bytes]] = ()
) -> None:
    """A whole JSON answer, from the middleware (before the app)."""
    import json

    body = json.dumps(payload).encode()
    length = str(len(body)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status_code,
            "headers": [(b"content-type", b"application/json"), (b"content-length", length)]
            + list(headers),
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _nul_in(send: Send, scope: Scope) -> None:
    """422 in FastAPI's shape, naming the query parameter (or the path) with a NUL character."""
    from urllib.parse import parse_qsl

    query = scope["query_string"].decode("latin-1")
    names = [k for k, v in parse_qsl(query, keep_blank_values=True) if "\x00" in k + v]
    loc = ["query", names[0]] if names and "\x00" not in scope["path"] else ["path"]
    error = {
        "loc": loc,
        "msg": "must not contain a NUL character",
        "type": "value_error",
        "field": loc[-1] if len(loc) > 1 else "(path)",
    }
    await _send_json(send, 422, {"detail": [error]})


def check_submission_allowed(session: Session, user: User, settings: Settings) -> None:
    """429 if `user` is at the cap of active experiments or of submissions per minute.

    With both caps off (0) there is nothing to count and no lock is taken: the lock on the
    user's row serializes that user's submissions, which only the caps need."""
    cap, rate = settings.max_active_experiments, settings.max_submissions_per_minute
    if not cap and not rate:
        return
    # Lock first, count after: under READ COMMITTED the count is a new statement, so it sees
    # every submission committed by whoever held the lock before.
    session.scalar(select(User.id).where(User.id == user.id).with_for_update())
    active, recent = session.execute(
        select(
            func.count().filter(Experiment.status.in_(ACTIVE)),
            func.count().filter(Experiment.created_at > utcnow() - timedelta(minutes=1)),
        )
        .select_from(Experiment)
        # a sweep counts once: its members (parent_id set) are not submissions of their own
        .where(Experiment.owner_id == user.id, Experiment.parent_id.is_(None))
    ).one()
    if cap and (active or 0) >= cap:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"you have {active} experiments queued or running; the cap is {cap} per user "
            "(DISTILLERY_MAX_ACTIVE_EXPERIMENTS): wait for one to finish or cancel one",
        )
    if rate and (recent or 0) >= rate:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"at most {rate} submissions per minute per user "
            "(DISTILLERY_MAX_SUBMISSIONS_PER_MINUTE): try again in a minute",
            headers={"Retry-After": "60"},
        )


def limit_responses() -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the answers this module gives."""
    return {413: {"description": "request body too large"}}
