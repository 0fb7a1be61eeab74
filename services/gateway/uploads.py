"""Upload rules of the gateway: limits from the settings, and no objects left by a failure."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from distillery.archive_safety import ArchiveLimits
from distillery.settings import Settings
from distillery.storage import Storage

#: The datasets bucket's prefix for uploads (`datasets/<id>`); nobody registers a prefix there.
UPLOADS = "datasets"


def upload_limits(settings: Settings) -> ArchiveLimits:
    return ArchiveLimits.from_settings(settings)


@contextmanager
def removed_on_error(storage: Storage, prefix: str | None) -> Iterator[None]:
    """Delete every object under `prefix/` if the block raises (a failed upload leaves nothing
    behind); `prefix=None` does nothing."""
    try:
        yield
    except BaseException:
        if prefix is not None:
            storage.delete_prefix(prefix.rstrip("/") + "/")
        raise
