"""The gateway's OpenAPI schema declares every status code the gateway answers with.

FastAPI declares only 200/201/204 and 422; the errors raised from dependencies, middleware and
routes are added here by rule, so a route needs no list of its own:

- an operation that needs a token (it has `security`): 401;
- a request body: 400 (a body that cannot be parsed at all), 413 (`limits.BodySizeLimit`), 422;
- query or path parameters: 422; a path parameter (an id): 404;
- `EXTRA`: what particular routes add (ownership 403, state conflicts 409, caps 429).

Errors other than 422 have the body `{"detail": "<message>"}` (`ErrorOut`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

#: (method, path) -> extra status codes that route returns.
EXTRA: dict[tuple[str, str], dict[int, str]] = {
    ("post", "/experiments"): {429: "too many experiments queued or running, or submitted"},
    ("post", "/experiments/{experiment_id}/cancel"): {
        403: "only the owner or an admin may cancel",
        409: "the experiment has already finished",
    },
    ("post", "/experiments/{experiment_id}/retry"): {
        403: "only the owner or an admin may retry",
        409: "nothing to retry: the experiment has not failed, been cancelled or ended partial",
    },
    ("put", "/experiments/{experiment_id}/shares/{user_name}"): {
        403: "only the owner or an admin may share",
    },
    ("delete", "/experiments/{experiment_id}/shares/{user_name}"): {
        403: "only the owner or an admin may take a share back",
    },
    ("delete", "/experiments/{experiment_id}"): {
        403: "only the owner or an admin may delete",
        409: "the experiment is still queued or running",
    },
}
ERROR_SCHEMA = {
    "title": "ErrorOut",
    "type": "object",
    "properties": {"detail": {"title": "Detail", "type": "string"}},
    "required": ["detail"],
}
DESCRIPTIONS = {
    400: "the request body cannot be parsed",
    401: "missing, unknown, expired or revoked token",
    404: "no such resource",
    413: "request body too large",
}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}},
    }


def declare_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the error responses (by the rules above) to every operation of `schema`."""
    schema.setdefault("components", {}).setdefault("schemas", {})["ErrorOut"] = ERROR_SCHEMA
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            responses = op.setdefault("responses", {})
            codes: dict[int, str] = {}
            if op.get("security"):
                codes[401] = DESCRIPTIONS[401]
            params = op.get("parameters", [])
            if "requestBody" in op:
                codes[400] = DESCRIPTIONS[400]
                codes[413] = DESCRIPTIONS[413]
            if any(p.get("in") == "path" for p in params):
                codes[404] = DESCRIPTIONS[404]
            codes.update(EXTRA.get((method, path), {}))
            for code, text in codes.items():
                responses.setdefault(str(code), _error(text))
            if ("requestBody" in op or params) and "422" not in responses:
                responses["422"] = {
                    "description": "Validation Error",
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/HTTPValidationError"}
                        }
                    },
                }
    return schema


def install(app: FastAPI) -> None:
    """Serve `declare_errors(FastAPI's schema)` at /openapi.json (built once)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = declare_errors(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
