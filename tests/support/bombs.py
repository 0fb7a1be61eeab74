"""Hostile archives and images for the upload tests and `benchmarks/upload_bombs.py`."""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
import zlib


def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid 1-bit grayscale PNG of `width` x `height` zeros: a few kB on disk, width*height
    bytes (and 3x that as RGB) once PIL decodes it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    rows_per_block = max(1, (1 << 20) // len(row))
    idat = bytearray()
    for start in range(0, height, rows_per_block):
        idat += comp.compress(row * min(rows_per_block, height - start))
    idat += comp.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", bytes(idat))
        + chunk(b"IEND", b"")
    )


def tar_gz_of(files: dict[str, bytes], mode: str = "w:gz") -> bytes:
    """A tar.gz (`mode="w"`: a plain tar) of `{name: content}`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zip_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def png_bomb_tar(mode: str = "w") -> bytes:
    """The issue's bomb: a tar holding one 20000x20000 PNG where a Cityscapes image goes (plain,
    so that only the image check, not the archive's compression ratio, can refuse it)."""
    name = "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    return tar_gz_of({name: png_bomb()}, mode)


def zeros_zip(nbytes: int = 1 << 30) -> bytes:
    """A zip of one file of `nbytes` zeros, written in 1 MiB pieces (about 1 MB per GiB)."""
    buf = io.BytesIO()
    piece = b"\x00" * (1 << 20)
    with (
        zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf,
        zf.open("zeros.bin", "w", force_zip64=True) as f,
    ):
        for _ in range(nbytes // len(piece)):
            f.write(piece)
    return buf.getvalue()


def corrupt(data: bytes) -> bytes:
    """`data` with a run of bytes in its middle inverted (directory at the end left intact)."""
    mid = len(data) // 3
    return data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + 64]) + data[mid + 64 :]
