"""API tokens: shown once at creation, stored only as their SHA-256.

No web framework here: `distillery admin create-user` uses these functions directly against the
database, and `deps.py` wraps `authenticate` into the `CurrentUser` dependency.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

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


def issue_token(session: Session, user: User) -> str:
    """A new token for `user` (committed); the plain token is returned and never stored."""
    token = new_token()
    session.add(ApiToken(user_id=user.id, token_hash=hash_token(token)))
    session.commit()
    return token


class UserExists(ValueError):
    pass


def create_user(session: Session, name: str, *, admin: bool = False) -> tuple[User, str]:
    """Create user `name` with one token; returns (user, token)."""
    name = name.strip()
    if not name:
        raise ValueError("a user name cannot be empty")
    if session.scalar(select(User).where(User.name == name)) is not None:
        raise UserExists(f"user {name!r} already exists")
    user = User(name=name, is_admin=admin)
    session.add(user)
    session.flush()
    return user, issue_token(session, user)


def authenticate(session: Session, token: str) -> User | None:
    """The user owning `token`, or None for an unknown token."""
    row = session.scalar(
        select(ApiToken)
        .where(ApiToken.token_hash == hash_token(token))
        .options(joinedload(ApiToken.user))
    )
    if row is None:
        return None
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
        row.last_used_at = now
        session.commit()
    return row.user
