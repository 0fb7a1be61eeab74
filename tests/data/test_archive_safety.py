"""Unpacking uploads under limits: bombs, hostile names, truncated and corrupt archives."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distillery.archive_safety import (
    ArchiveError,
    ArchiveLimits,
    check_member_name,
    extract_archive,
    verify_archive,
)
from distillery.data.datasets import read_image
from distillery.data.errors import DatasetError
from tests.support.bombs import corrupt, png_bomb, png_bomb_tar, tar_gz_of, zeros_zip, zip_of


def _png(size: tuple[int, int] = (8, 4)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size, 3), np.uint8)).save(
        buf, "PNG"
    )
    return buf.getvalue()


def refused(tmp_path: Path, data: bytes, limits: ArchiveLimits | None = None) -> str:
    archive = tmp_path / "upload"
    archive.write_bytes(data)
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError) as e:
        extract_archive(archive, dest, limits)
    written = [p for p in dest.rglob("*") if p.is_file()] if dest.exists() else []
    assert not any(p.stat().st_size > 1 << 20 for p in written)
    return str(e.value)


def test_a_png_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    msg = refused(tmp_path, png_bomb_tar())
    assert "aachen_000000_000019_leftImg8bit.png: more than the limit of 16777216 pixels" in msg
    assert "400000000 pixels" in msg


def test_the_data_loader_checks_pixels_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bomb(9000, 9000))  # over 8192x8192, under PIL's own bomb limit
    with pytest.raises(DatasetError, match=r"bomb.png: 9000x9000 pixels, more than the limit"):
        read_image(path)


def test_a_zip_of_a_gibibyte_of_zeros_is_refused_by_its_ratio(tmp_path: Path) -> None:
    msg = refused(tmp_path, zeros_zip(1 << 30))
    assert "compression ratio" in msg and "limit of 100" in msg
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_total_size_member_count_and_member_size_are_capped(tmp_path: Path) -> None:
    files = {f"a/{i}.png": _png() for i in range(5)}
    size = len(_png())
    assert "more than 4 entries" in refused(
        tmp_path, tar_gz_of(files), ArchiveLimits(max_members=4)
    )
    assert "more than 100 bytes" in refused(
        tmp_path, tar_gz_of(files), ArchiveLimits(max_total_bytes=100)
    )
    assert "per file" in refused(tmp_path, zip_of(files), ArchiveLimits(max_member_bytes=size - 1))


@pytest.mark.parametrize(
    "name",
    ["..\\evil.png", "a\\..\\..\\evil.png", "C:/evil.png", "/etc/evil", "a/../../evil", "a\x01b"],
)
def test_names_that_could_leave_the_folder_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ArchiveError):
        check_member_name(name)
    msg = refused(tmp_path, zip_of({name: b"x", "ok.txt": b"y"}))
    assert "archive entry" in msg
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "out").exists()


def test_links_are_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    assert "link or special file" in refused(tmp_path, buf.getvalue())


def test_truncated_and_corrupt_archives_are_clear_errors(tmp_path: Path) -> None:
    files = {f"leftImg8bit/train/a/{i}.png": _png((64, 64)) for i in range(4)}
    good = tar_gz_of(files)
    assert "truncated or corrupt" in refused(tmp_path, good[: len(good) // 2])
    assert "truncated or corrupt" in refused(tmp_path, zip_of(files)[:-30] + b"\x00" * 30)
    assert "truncated or corrupt" in refused(tmp_path, corrupt(zip_of(files)))
    assert "truncated or corrupt" in refused(tmp_path, b"\x1f\x8b" + b"\x00" * 20)
    assert "not a .tar.gz" in refused(tmp_path, b"this is not an archive")


def test_verify_reads_everything_the_request_may_read_and_writes_nothing(tmp_path: Path) -> None:
    # What the gateway runs in the request: the directory's limits and, for a zip, every
    # member's checksum; an image bomb passes (only the check job unpacks and decodes).
    files = {f"leftImg8bit/train/a/{i}.png": _png((64, 64)) for i in range(4)}
    cases = {
        "cut.tgz": tar_gz_of(files)[:-200],
        "bad.zip": corrupt(zip_of(files)),
        "win.zip": zip_of({"..\\evil.png": b"x"}),
        "zeros.zip": zeros_zip(64 << 20),
    }
    for name, data in cases.items():
        archive = tmp_path / name
        archive.write_bytes(data)
        with pytest.raises(ArchiveError):
            verify_archive(archive)
    for name, data in {"ok.zip": zip_of(files), "bomb.tar": png_bomb_tar()}.items():
        archive = tmp_path / name
        archive.write_bytes(data)
        assert len(verify_archive(archive)) >= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*cases, "ok.zip", "bomb.tar"])


def test_a_good_archive_still_unpacks(tmp_path: Path) -> None:
    archive = tmp_path / "ok.tgz"
    archive.write_bytes(tar_gz_of({"top/x/1.png": _png(), "top/y/2.png": _png()}))
    root = extract_archive(archive, tmp_path / "out")
    assert root.name == "top" and (root / "x/1.png").is_file() and (root / "y/2.png").is_file()


def test_an_image_over_the_upload_limit_but_under_pils_is_refused_by_its_header(
    tmp_path: Path,
) -> None:
    msg = refused(tmp_path, tar_gz_of({"a/big.png": png_bomb(5000, 5000)}, "w"))
    assert "a/big.png: 5000x5000 pixels, more than the limit of 16777216" in msg
