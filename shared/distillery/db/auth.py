"""API tokens: shown once at creation, stored only as their SHA-256, with an expiry
(`Settings.token_ttl_days` by default) and a revocation time.

No web framework here: `distillery admin create-user` uses these functions directly against the
database, and `deps.py` wraps `authenticate` into the `CurrentUser` dependency.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from distillery.db import ApiToken, User
from distillery.db.models import utcnow

#: `last_used_at` is refreshed at most this often (not a database write per request).
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_token(token: str) -> str:
    """The hex SHA-256 of a token: what the database keeps."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


#: Days a new token is valid when no other lifetime is asked for (`Settings.token_ttl_days`).
DEFAULT_TTL_DAYS = 90


def issue_token(session: Session, user: User, ttl_days: int | None = DEFAULT_TTL_DAYS) -> str:
    """A new token for `user` (committed), valid `ttl_days` (None or 0: never expires); the
    plain token is returned and never stored."""
    token = new_token()
    expires = utcnow() + timedelta(days=ttl_days) if ttl_days else None
    session.add(ApiToken(user_id=user.id, token_hash=hash_token(token), expires_at=expires))
    session.commit()
    return token


class UserExists(ValueError):
    pass


def create_user(
    session: Session, name: str, *, admin: bool = False, ttl_days: int | None = DEFAULT_TTL_DAYS
) -> tuple[User, str]:
    """Create user `name` with one token (valid `ttl_days`); returns (user, token)."""
    name = name.strip()
    if not name:
        raise ValueError("a user name cannot be empty")
    if session.scalar(select(User).where(User.name == name)) is not None:
        raise UserExists(f"user {name!r} already exists")
    user = User(name=name, is_admin=admin)
    session.add(user)
    session.flush()
    return user, issue_token(session, user, ttl_days)


def authenticate(session: Session, token: str) -> User | None:
    """The user owning `token`, or None for an unknown, expired or revoked token. The lookup is
    by the token's SHA-256 and the stored hash is compared in constant time."""
    digest = hash_token(token)
    row = session.scalar(
        select(ApiToken).where(ApiToken.token_hash == digest).options(joinedload(ApiToken.user))
    )
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        return None
    now = utcnow()
    if row.revoked_at is not None or (row.expires_at is not None and _aware(row.expires_at) <= now):
        return None
    if row.last_used_at is None or now - _aware(row.last_used_at) > LAST_USED_RESOLUTION:
        row.last_used_at = now
        session.commit()
    return row.user


def _aware(ts: datetime) -> datetime:
    """SQLite gives naive datetimes back; every stored time is UTC."""
    from datetime import UTC

    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


@dataclass(frozen=True)
class TokenInfo:
    """What `list_tokens` shows of a token: never its value or hash."""

    id: int
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None

    @property
    def state(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and _aware(self.expires_at) <= utcnow():
            return "expired"
        return "active"


def list_tokens(session: Session, user: User) -> list[TokenInfo]:
    """`user`'s tokens, oldest first, without their values."""
    rows = session.scalars(
        select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id)
    ).all()
    return [TokenInfo(r.id, r.created_at, r.last_used_at, r.expires_at, r.revoked_at) for r in rows]


def revoke_token(session: Session, token_id: int) -> ApiToken:
    """Revoke token `token_id` (committed; revoking twice keeps the first time); `LookupError`
    if there is no such token."""
    row = session.get(ApiToken, token_id)
    if row is None:
        raise LookupError(f"no token with id {token_id}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.commit()
    return row
