"""Unpacking an uploaded dataset archive (.tar.gz, .tgz, .tar or .zip) safely."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path, PurePosixPath

#: Entries that archivers add and that are no part of a dataset.
JUNK = {"__MACOSX", ".DS_Store"}


class ArchiveError(ValueError):
    """An archive that cannot be unpacked; the message says which entry."""


def _check_member(name: str) -> None:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts:
        raise ArchiveError(f"archive entry {name!r} points outside the archive")


def extract_archive(archive: Path, dest: Path, max_bytes: int = 50 << 30) -> Path:
    """Unpack `archive` into `dest` and return the dataset root.

    Links, devices and paths leaving `dest` are refused. If everything sits in one top folder
    (`tar czf x.tgz mydata/`) that folder is the root.
    """
    dest.mkdir(parents=True, exist_ok=True)
    total = 0
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _check_member(info.filename)
                total += info.file_size
            if total > max_bytes:
                raise ArchiveError(f"archive unpacks to {total} bytes, more than {max_bytes}")
            zf.extractall(dest)
    else:
        if not tarfile.is_tarfile(archive):
            raise ArchiveError("not a .tar.gz, .tar or .zip archive")
        with tarfile.open(archive, "r:*") as tf:
            members = tf.getmembers()
            for m in members:
                _check_member(m.name)
                if not (m.isfile() or m.isdir()):
                    raise ArchiveError(f"archive entry {m.name!r} is a link or special file")
                total += m.size
            if total > max_bytes:
                raise ArchiveError(f"archive unpacks to {total} bytes, more than {max_bytes}")
            # The "data" filter (Python >= 3.11.4) also drops setuid bits and the like; without
            # it (Debian 12's 3.11.2) the checks above still refuse links, devices and escapes.
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            try:
                tf.extractall(dest, members=members, **safe)
            except tarfile.TarError as e:
                raise ArchiveError(f"cannot unpack archive: {e}") from None
    for junk in JUNK:
        for p in list(dest.rglob(junk)):
            if p.is_dir():
                import shutil

                shutil.rmtree(p)
            else:
                p.unlink()
    root = dest
    entries = [p for p in root.iterdir()]
    while len(entries) == 1 and entries[0].is_dir():
        root = entries[0]
        entries = list(root.iterdir())
    if not entries:
        raise ArchiveError("the archive holds no files")
    return root
