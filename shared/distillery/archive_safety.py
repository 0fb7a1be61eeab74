"""Unpacking an uploaded dataset archive (.tar.gz, .tgz, .tar or .zip) under limits.

`verify_archive(archive, limits)` (the gateway, in the request: nothing is written) and
`extract_archive(archive, dest, limits)` (the dataset check on the cpu queue) are plain functions
(no web framework, no torch). Before a byte is written they read the archive's directory and
refuse:

- names that leave the folder: absolute, `..` (also Windows-style `..\\`), drive letters,
  backslashes, control characters, over-long names;
- links, devices and other special members;
- more than `max_members` members, a member over `max_member_bytes`, a total unpacked size over
  `max_total_bytes`, or an unpacked/packed ratio over `max_ratio` (a zip of zeros);
- a truncated or corrupt archive (a clear `ArchiveError`, never a crash).

After unpacking, every image's header is read (no pixel decoded) and an image of more than
`max_image_pixels` pixels is refused (a 20000x20000 PNG bomb is 11 KB packed and 1.2 GB decoded).
"""

from __future__ import annotations

import re
import shutil
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

#: Entries that archivers add and that are no part of a dataset.
JUNK = {"__MACOSX", ".DS_Store"}
#: Largest image (width x height) read anywhere in Distillery: 8192 x 8192 pixels.
MAX_IMAGE_PIXELS = 8192 * 8192
#: Largest image in an upload: 4096 x 4096 (the spec's largest side; Cityscapes is 2048 x 1024).
#: Decoding one takes ~50 MB as RGB, so checking an upload stays far below 500 MB.
MAX_UPLOAD_IMAGE_PIXELS = 4096 * 4096
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
#: What unpacking raises for an archive that is cut short or damaged.
_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError)
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f\\]|^[A-Za-z]:")


class ArchiveError(ValueError):
    """An archive that cannot be unpacked; the message says which entry and which limit."""


@dataclass(frozen=True)
class ArchiveLimits:
    """What one upload may unpack to (`Settings.upload_*` on the platform)."""

    max_members: int = 200_000
    max_member_bytes: int = 2 << 30
    max_total_bytes: int = 50 << 30
    #: Unpacked bytes per packed byte; PNG/JPEG data barely compress, zeros compress ~1000x.
    max_ratio: float = 100.0
    max_image_pixels: int = MAX_UPLOAD_IMAGE_PIXELS
    max_name_chars: int = 512

    @classmethod
    def from_settings(cls, settings: Any) -> ArchiveLimits:
        return cls(
            max_members=settings.upload_max_members,
            max_member_bytes=settings.upload_max_member_bytes,
            max_total_bytes=settings.upload_max_unpacked_bytes,
            max_ratio=settings.upload_max_ratio,
            max_image_pixels=settings.upload_max_image_pixels,
        )


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    is_dir: bool


def _shown(name: str, limit: int = 80) -> str:
    text = repr(name)
    return text if len(text) <= limit else text[:limit] + "...'"


def check_member_name(name: str, limits: ArchiveLimits = ArchiveLimits()) -> None:
    """Refuse a member name that could leave the destination folder on any system."""
    if not name or len(name) > limits.max_name_chars:
        raise ArchiveError(
            f"archive entry {_shown(name)}: empty or longer than {limits.max_name_chars} characters"
        )
    if _BAD_NAME.search(name):
        raise ArchiveError(
            f"archive entry {_shown(name)}: backslashes, drive letters and control characters "
            "are not allowed in names (use / between folders)"
        )
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts:
        raise ArchiveError(f"archive entry {_shown(name)} points outside the archive")


def list_members(archive: Path, limits: ArchiveLimits = ArchiveLimits()) -> list[Member]:
    """Read the archive's directory and check every name, type and size against `limits`
    (nothing is unpacked); `ArchiveError` on the first problem."""
    members: list[Member] = []
    total = 0

    def add(name: str, size: int, is_dir: bool) -> None:
        nonlocal total
        check_member_name(name, limits)
        if len(members) >= limits.max_members:
            raise ArchiveError(f"the archive has more than {limits.max_members} entries")
        if size > limits.max_member_bytes:
            raise ArchiveError(
                f"archive entry {_shown(name)} unpacks to {size} bytes, more than the limit "
                f"of {limits.max_member_bytes} per file"
            )
        total += size
        if total > limits.max_total_bytes:
            raise ArchiveError(
                f"the archive unpacks to more than {limits.max_total_bytes} bytes (the limit)"
            )
        members.append(Member(name, size, is_dir))

    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    add(info.filename, info.file_size, info.is_dir())
        elif _is_tar(archive):
            with tarfile.open(archive, "r:*") as tf:
                for m in tf:  # streamed: a huge member list is refused before it is all read
                    if not (m.isfile() or m.isdir()):
                        raise ArchiveError(
                            f"archive entry {_shown(m.name)} is a link or special file"
                        )
                    add(m.name, m.size, m.isdir())
        elif _magic(archive) in (b"PK", b"\x1f\x8b"):
            raise ArchiveError("the archive is truncated or corrupt (a zip or gzip file cut short)")
        else:
            raise ArchiveError("not a .tar.gz, .tgz, .tar or .zip archive")
    except ArchiveError:
        raise
    except _CORRUPT as e:
        raise ArchiveError(f"the archive is truncated or corrupt ({_reason(e)})") from None
    packed = max(1, archive.stat().st_size)
    if total / packed > limits.max_ratio:
        raise ArchiveError(
            f"the archive unpacks to {total} bytes from {packed}: a compression ratio of "
            f"{total / packed:.0f}, more than the limit of {limits.max_ratio:.0f}"
        )
    return members


def _magic(archive: Path) -> bytes:
    with open(archive, "rb") as f:
        return f.read(2)


def _is_tar(archive: Path) -> bool:
    try:
        return tarfile.is_tarfile(archive)
    except _CORRUPT:
        return False


def _reason(e: BaseException) -> str:
    return (str(e) or type(e).__name__)[:200]


def extract_archive(archive: Path, dest: Path, limits: ArchiveLimits | None = None) -> Path:
    """Unpack `archive` into `dest` under `limits` and return the dataset root.

    If everything sits in one top folder (`tar czf x.tgz mydata/`) that folder is the root.
    Every image's size is checked from its header before anything decodes it.
    """
    limits = limits or ArchiveLimits()
    list_members(archive, limits)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                _extract_zip(zf, dest, limits)
        else:
            # The "data" filter (Python >= 3.11.4) also drops setuid bits and the like; without
            # it (Debian 12's 3.11.2) `list_members` has already refused links, devices, escapes.
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            with tarfile.open(archive, "r:*") as tf:
                tf.extractall(dest, **safe)
    except ArchiveError:
        raise
    except _CORRUPT as e:
        raise ArchiveError(f"the archive is truncated or corrupt ({_reason(e)})") from None
    for junk in JUNK:
        for p in list(dest.rglob(junk)):
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
    root = dest
    entries = list(root.iterdir())
    while len(entries) == 1 and entries[0].is_dir():
        root = entries[0]
        entries = list(root.iterdir())
    if not entries:
        raise ArchiveError("the archive holds no files")
    check_image_headers(dest, limits.max_image_pixels)  # names as in the archive
    return root


def verify_archive(archive: Path, limits: ArchiveLimits | None = None) -> list[Member]:
    """`list_members`, and for a zip also every member's data streamed through its CRC check
    (a tar.gz is already read to its end by listing it): a truncated or corrupt archive is an
    `ArchiveError` naming the entry. Nothing is written; memory stays at one 1 MiB chunk."""
    limits = limits or ArchiveLimits()
    members = list_members(archive, limits)
    if zipfile.is_zipfile(archive):
        try:
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    if not info.is_dir():
                        for _ in _zip_chunks(zf, info, limits):
                            pass
        except ArchiveError:
            raise
        except _CORRUPT as e:
            raise ArchiveError(f"the archive is truncated or corrupt ({_reason(e)})") from None
    return members


def _zip_chunks(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, limits: ArchiveLimits
) -> Iterator[bytes]:
    """A member's data in 1 MiB chunks, never more than its declared size (a lying header
    fails its CRC check in `zipfile`)."""
    read = 0
    with zf.open(info) as src:
        while chunk := src.read(1 << 20):
            read += len(chunk)
            if read > info.file_size or read > limits.max_member_bytes:
                raise ArchiveError(
                    f"archive entry {_shown(info.filename)} unpacks to more than it declares"
                )
            yield chunk


def _extract_zip(zf: zipfile.ZipFile, dest: Path, limits: ArchiveLimits) -> None:
    """Stream every member out (`_zip_chunks`)."""
    for info in zf.infolist():
        target = dest / info.filename
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as out:
            for chunk in _zip_chunks(zf, info, limits):
                out.write(chunk)


def image_pixels(path: Path) -> tuple[int, int] | None:
    """(width, height) from an image file's header (no pixel decoded); None if it is not an
    image PIL knows (the dataset check then names the file). PIL's own bomb check (twice
    `Image.MAX_IMAGE_PIXELS`) raises `Image.DecompressionBombError` here."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except Image.DecompressionBombError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None


def check_image_headers(root: Path, max_pixels: int = MAX_IMAGE_PIXELS) -> int:
    """Refuse any image under `root` whose header declares more than `max_pixels` pixels;
    returns how many images were checked."""
    from PIL import Image

    checked = 0
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        rel = path.relative_to(root).as_posix()
        try:
            size = image_pixels(path)
        except Image.DecompressionBombError as e:
            raise ArchiveError(
                f"{rel}: more than the limit of {max_pixels} pixels (a decompression bomb?): {e}"
            ) from None
        checked += 1
        if size is not None and size[0] * size[1] > max_pixels:
            raise ArchiveError(
                f"{rel}: {size[0]}x{size[1]} pixels, more than the limit of {max_pixels} "
                "(a decompression bomb?)"
            )
    return checked
