"""The work of one dataset check, run in a child process under limits (`job.run_child`):

    python -m distillery.checking.check REQUEST.json RESULT.json

It limits its own address space first (`RLIMIT_AS`, `request["memory_mb"]`), then fetches the
data (an upload's staged archive, unpacked with `distillery.archive_safety`'s limits, or a
registered prefix), reads every image's header against the pixel limit, decodes and checks every
image and mask of the splits (layout, pairs, label values), computes the training split's class
statistics and, for an upload, stores the tree under its prefix. It writes its outcome to
RESULT.json: `{"status": "ready", "summary", "stats"}` or `{"status": "invalid", "error"}`; a
`MemoryError` (over the limit) is an invalid outcome that names the limit.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import signal
import sys
from pathlib import Path
from typing import Any

#: Splits every dataset must have; statistics come from the first.
SPLITS = ("train", "val")


def limit_memory(memory_mb: int) -> None:
    """Cap this process's address space at `memory_mb` MiB (allocations past it fail with
    `MemoryError`), and die with the process that started it (Linux)."""
    limit = int(memory_mb) << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def memory_message(memory_mb: int) -> str:
    return f"the check went over its memory limit of {memory_mb} MB (DISTILLERY_CHECK_MEMORY_MB)"


def invalid(error: str) -> dict[str, Any]:
    return {"status": "invalid", "error": error}


def check(request: dict[str, Any]) -> dict[str, Any]:
    """Check the dataset `request` names (see the module docstring); returns the outcome."""
    from PIL import Image

    from distillery.archive_safety import (
        ArchiveError,
        ArchiveLimits,
        check_image_headers,
        extract_archive,
    )
    from distillery.s3 import make_storage
    from distillery.settings import get_settings
    from distillery.storage import get_dir, put_dir

    settings = get_settings()
    storage = make_storage(settings, settings.datasets_bucket)
    work = Path(request["work_dir"])
    prefix, archive_key = request["prefix"], request["archive_key"]
    limits = ArchiveLimits.from_settings(settings)
    try:
        if archive_key is not None:
            archive = work / "upload"
            if not storage.exists(archive_key):
                return invalid(f"the uploaded archive ({archive_key}) is gone; upload it again")
            storage.get_file(archive_key, archive)
            root = extract_archive(archive, work / "data", limits)
            archive.unlink()
        else:
            root = work / "data"
            if not get_dir(storage, prefix, root):
                return invalid(f"no objects under {prefix!r} in the datasets bucket")
            check_image_headers(root, limits.max_image_pixels)
    except ArchiveError as e:
        return invalid(str(e))
    # PIL refuses to decode over twice this; the header check above already refused over it.
    Image.MAX_IMAGE_PIXELS = limits.max_image_pixels
    summary, stats, error = _validate(root, request["format"])
    if error is not None:
        return invalid(error.replace(str(root), prefix.rstrip("/")))
    if archive_key is not None:
        put_dir(storage, prefix, root)
    return {"status": "ready", "summary": summary, "stats": stats}


def _validate(root: Path, fmt: str) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """(summary per split, class statistics of the first split, None), or the problem."""
    from distillery.data.errors import DatasetError
    from distillery.data.stats import compute_stats
    from distillery.data.validate import validate_dataset

    try:
        summary = {split: validate_dataset(root, fmt, split) for split in SPLITS}
        stats = compute_stats(root, fmt, SPLITS[0]).model_dump(mode="json")
    except (DatasetError, FileNotFoundError) as e:
        return {}, {}, str(e)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - an undecodable file is the data's problem
        return {}, {}, f"check failed: {type(e).__name__}: {e}"
    return summary, stats, None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    request = json.loads(Path(args[0]).read_text())
    result = Path(args[1])
    limit_memory(request["memory_mb"])
    try:
        outcome = check(request)
    except MemoryError:
        outcome = invalid(memory_message(request["memory_mb"]))
    tmp = result.with_suffix(".tmp")
    tmp.write_text(json.dumps(outcome))
    os.replace(tmp, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
