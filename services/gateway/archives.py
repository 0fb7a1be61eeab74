"""Unpacking an uploaded dataset archive: see `distillery.archive_safety` (the gateway and
a CPU-queue stage share it)."""

from distillery.archive_safety import ArchiveError, ArchiveLimits, extract_archive

__all__ = ["ArchiveError", "ArchiveLimits", "extract_archive"]
