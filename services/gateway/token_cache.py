"""Recently authenticated tokens, so a request does not read `api_tokens` every time.

A hit costs a dictionary lookup; a miss (or an entry older than `ttl_s`) goes to the database
through `distillery.db.auth.authenticate`, which also refreshes `last_used_at`. Only known
tokens are kept, by their SHA-256. A token removed from the database keeps working on a process
that saw it for at most `ttl_s` seconds.
"""

from __future__ import annotations

import asyncio
import threading
import time

from distillery.db import User

#: Entries kept at most; past that the cache starts over (it is a cache, not a table).
MAX_ENTRIES = 10_000


class TokenCache:
    """`token hash -> User` (detached, read-only: never add it to a session), for `ttl_s`."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, User]] = {}
        self._lock = threading.Lock()
        #: Held (in the event loop) while a miss is looked up in the database.
        self.lookup_lock = asyncio.Lock()

    def get(self, token_hash: str) -> User | None:
        entry = self._entries.get(token_hash)
        if entry is None:
            return None
        expires_at, user = entry
        if time.monotonic() >= expires_at:
            with self._lock:
                self._entries.pop(token_hash, None)
            return None
        return user

    def put(self, token_hash: str, user: User) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[token_hash] = (time.monotonic() + self.ttl_s, user)
