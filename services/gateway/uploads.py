"""Upload rules of the gateway: limits from the settings, and no objects left by a failure."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from distillery.archive_safety import ArchiveLimits
from distillery.checking.keys import UPLOADS, is_upload_prefix
from distillery.settings import Settings
from distillery.storage import Storage

__all__ = ["UPLOADS", "is_upload_prefix", "removed_on_error", "upload_limits"]


def upload_limits(settings: Settings) -> ArchiveLimits:
    return ArchiveLimits.from_settings(settings)


@contextmanager
def removed_on_error(storage: Storage, key: str | None) -> Iterator[None]:
    """Delete the object `key` (and anything under `key/`) if the block raises: a failed upload
    leaves nothing behind; `key=None` does nothing."""
    try:
        yield
    except BaseException:
        if key is not None:
            storage.delete_prefix(key)
        raise
