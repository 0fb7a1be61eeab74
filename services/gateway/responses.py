"""Answers the routes build themselves: a model as JSON, rows as JSON, and `ETag` /
`If-None-Match` helpers.

A route that returns a pydantic model makes FastAPI validate it against `response_model` again
(in the thread pool, for a plain `def` route) before serializing it. `model_response` serializes
the model once, with pydantic's own JSON encoder; the route keeps `response_model` for the docs.
`rows_response` serializes plain values read from the database, already in the response model's
shape, with the same encoder and no validation (for pages of rows, validating each item cost as
much as the query).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import Response
from pydantic import BaseModel
from pydantic_core import to_json


def model_response(
    model: BaseModel,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
    **dump: Any,
) -> Response:
    """`model` as `application/json` (what FastAPI would send: field names, JSON datetimes);
    `dump` goes to `model_dump_json` (e.g. `exclude=`)."""
    return Response(
        content=model.model_dump_json(**dump),
        status_code=status_code,
        headers=dict(headers or {}),
        media_type="application/json",
    )


def rows_response(content: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> Response:
    """`content` as `application/json`, encoded as `model_response` encodes a model (JSON
    datetimes, strings as they are). The route builds it in its `response_model`'s shape from its
    own rows (`tests/services/gateway/test_schemathesis.py` checks every answer against it)."""
    return Response(
        content=to_json(content, inf_nan_mode="null"),
        headers=dict(headers or {}),
        media_type="application/json",
    )


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an `If-None-Match` header names `etag` (weak comparison, `*` matches any)."""
    if not if_none_match:
        return False
    wanted = _opaque(etag)
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or _opaque(candidate) == wanted:
            return True
    return False


def _opaque(tag: str) -> str:
    return tag[2:] if tag.startswith("W/") else tag


def not_modified(etag: str) -> Response:
    """`304 Not Modified` with the tag (no body)."""
    return Response(status_code=304, headers={"ETag": etag})
