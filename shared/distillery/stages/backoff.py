"""Bounded exponential backoff for the platform's two dependencies that may blink: the database
and the object store. A stage waits out a short outage instead of failing; past the budget the
error propagates with its reason."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import urllib3.exceptions
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Seconds a stage keeps retrying one call before giving up.
DEFAULT_BUDGET_S = 120.0


def is_transient(exc: BaseException) -> bool:
    """A connection-level failure (refused, reset, timed out, server unavailable): worth
    retrying. Data errors (a constraint, a bad value) are not."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    if isinstance(exc, DBAPIError):
        return bool(exc.connection_invalidated)
    if isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError):
        return True
    code = getattr(exc, "code", None)  # minio.error.S3Error
    return code in ("InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout")


def is_deadlock(exc: BaseException) -> bool:
    """Postgres aborted this transaction to break a deadlock (SQLSTATE 40P01): run it again."""
    return isinstance(exc, OperationalError) and getattr(exc.orig, "sqlstate", None) == "40P01"


def retrying(
    what: str,
    fn: Callable[[], T],
    *,
    budget_s: float = DEFAULT_BUDGET_S,
    first_delay_s: float = 0.5,
    max_delay_s: float = 8.0,
) -> T:
    """`fn()`, retried on transient errors with delays 0.5, 1, 2, 4, 8, 8, ... s until
    `budget_s` has passed; then the last error is raised."""
    deadline = time.monotonic() + budget_s
    delay = first_delay_s
    attempt = 1
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning(
                "%s failed (attempt %d: %s); retrying in %.1fs", what, attempt, _short(exc), delay
            )
            time.sleep(delay)
            delay = min(max_delay_s, delay * 2)
            attempt += 1


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}"
