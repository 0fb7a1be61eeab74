"""Hostile uploads. What the archive's directory shows (names, links, sizes, ratio, truncation) is
a 422 in the request naming the file and the entry, with nothing written; what only unpacking
or decoding shows (a PNG bomb, an image too large to decode, a check too slow) ends the dataset
`invalid` naming the file or the limit, with no object left. The gateway's memory stays small
while it takes a PNG bomb, and so does the checker's."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import select

from distillery.checking.keys import staged_archive_key
from distillery.db import Dataset
from distillery.s3 import make_storage
from tests.support import devstack
from tests.support.bombs import corrupt, png_bomb, png_bomb_tar, tar_gz_of, zeros_zip, zip_of

from .helpers import auth
from .test_datasets import checked, tar_gz, upload, zipped

BOMB_NAME = "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"


def nothing_written(settings, session_factory) -> None:
    storage = make_storage(settings, settings.datasets_bucket)
    assert storage.list("") == []
    with session_factory() as s:
        assert s.scalars(select(Dataset)).all() == []


@pytest.fixture
def small_cityscapes(cityscapes_dir: Path) -> dict[str, bytes]:
    return {
        p.relative_to(cityscapes_dir).as_posix(): p.read_bytes()
        for p in sorted(cityscapes_dir.rglob("*"))
        if p.is_file()
    }


def test_hostile_archives_are_422s_that_leave_nothing(
    as_user, settings, session_factory, cityscapes_dir, small_cityscapes
):
    alice = as_user("alice")
    good_tgz, good_zip = tar_gz(cityscapes_dir), zipped(cityscapes_dir)
    cases = [
        (zeros_zip(256 << 20), "zeros.zip", "compression ratio"),
        (good_tgz[: len(good_tgz) // 2], "cut.tar.gz", "truncated or corrupt"),
        (corrupt(good_zip), "bad.zip", "truncated or corrupt"),
        (zip_of({"..\\..\\evil.png": b"x", **small_cityscapes}), "win.zip", "backslashes"),
        (tar_gz_of({"../escape.txt": b"x"}), "up.tar.gz", "points outside the archive"),
    ]
    for data, filename, says in cases:
        r = upload(alice, data, filename=filename)
        assert r.status_code == 422, (filename, r.text)
        (err,) = r.json()["detail"]
        assert err["field"] == "file" and err["msg"].startswith(repr(filename)), err
        assert says in err["msg"], (filename, err["msg"])
        nothing_written(settings, session_factory)


def test_a_check_that_fails_removes_the_uploaded_objects(
    as_user, settings, cityscapes_dir, checker
):
    # An image that PIL cannot decode: staged, checked, refused, and every object removed.
    img = cityscapes_dir / BOMB_NAME
    img.write_bytes(img.read_bytes()[:40])
    ds = checked(as_user("alice"), upload(as_user("alice"), tar_gz(cityscapes_dir)))
    assert ds["status"] == "invalid" and "aachen_000000_000019_leftImg8bit.png" in ds["error"]
    assert make_storage(settings, settings.datasets_bucket).list("") == []


def test_png_bomb_is_invalid_naming_the_file_and_leaves_nothing(
    as_user, settings, session_factory, checker
):
    r = upload(as_user("alice"), png_bomb_tar(), filename="bomb.tar")
    ds = checked(as_user("alice"), r)
    assert ds["status"] == "invalid", ds
    assert ds["error"].startswith(BOMB_NAME), ds["error"]
    assert "more than the limit of 16777216 pixels" in ds["error"], ds["error"]
    assert make_storage(settings, settings.datasets_bucket).list("") == []
    with session_factory() as s:
        row = s.get(Dataset, ds["id"])
        assert row.archive_key is None and row.check_holder is None
    # Refused from the header: the checker's child never decoded it.
    peak = ds["summary"]["check"]["peak_rss_mb"]
    print(f"PNG bomb: checker child peak RSS {peak:.0f} MB (limit {settings.check_memory_mb} MB)")
    assert 0 < peak < settings.check_memory_mb


def test_an_image_over_the_memory_limit_is_invalid_and_the_checker_lives_on(
    as_user, settings, cityscapes_dir, start_checker
):
    # 8192x8192 passes a raised pixel limit, but decoding it (67 MB grey, 201 MB RGB, and a
    # copy) does not fit the check's 1024 MB of address space beside the code it imports.
    (cityscapes_dir / BOMB_NAME).write_bytes(png_bomb(8192, 8192))
    start_checker(upload_max_image_pixels=8192 * 8192, check_memory_mb=1024)
    alice = as_user("alice")
    ds = checked(alice, upload(alice, tar_gz(cityscapes_dir), name="too-big"))
    assert ds["status"] == "invalid", ds
    assert "memory limit of 1024 MB" in ds["error"] and "DISTILLERY_CHECK_MEMORY_MB" in ds["error"]
    assert make_storage(settings, settings.datasets_bucket).list("") == []
    # The same checker goes on to check the next upload.
    (cityscapes_dir / BOMB_NAME).unlink()
    (cityscapes_dir / BOMB_NAME.replace("leftImg8bit", "gtFine", 1).replace(
        "leftImg8bit.png", "gtFine_labelIds.png")).unlink()  # fmt: skip
    ds = checked(alice, upload(alice, tar_gz(cityscapes_dir), name="fine"))
    assert ds["status"] == "ready", ds


def test_a_check_over_the_time_limit_is_invalid(as_user, settings, cityscapes_dir, start_checker):
    start_checker(check_timeout_s=0.5)  # less than the child takes to import the data code
    ds = checked(as_user("alice"), upload(as_user("alice"), tar_gz(cityscapes_dir)))
    assert ds["status"] == "invalid", ds
    assert "time limit of 0.5 s" in ds["error"] and "DISTILLERY_CHECK_TIMEOUT_S" in ds["error"]
    assert make_storage(settings, settings.datasets_bucket).list("") == []


def test_nobody_registers_a_prefix_under_the_uploads(as_user, settings, cityscapes_dir):
    r = upload(as_user("alice"), tar_gz(cityscapes_dir))
    assert r.status_code == 202, r.text
    prefix = r.json()["prefix"]
    r = as_user("bob").post(
        "/datasets", data={"name": "mine-now", "format": "cityscapes", "prefix": prefix}
    )
    assert r.status_code == 422 and "holds uploads" in r.json()["detail"][0]["msg"]
    r = as_user("bob").post(
        "/datasets",
        data={"name": "its-archive", "format": "cityscapes", "prefix": staged_archive_key("x")},
    )
    assert r.status_code == 422 and "holds uploads" in r.json()["detail"][0]["msg"]
    r = as_user("bob").post(
        "/datasets", data={"name": "mine-now", "format": "cityscapes", "prefix": prefix}
    )
    assert r.status_code == 422 and "holds uploads" in r.json()["detail"][0]["msg"]
    assert len(as_user("bob").get("/datasets").json()["items"]) == 1


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


def test_png_bomb_peak_gateway_memory_stays_under_500_mb(settings, make_user, tmp_path):
    # The request only reads the archive's directory and stores it: a 202, nothing decoded.
    token = make_user("alice")
    log = tmp_path / "gateway.log"
    with devstack.start_gateway(devstack.process_env(settings), log) as gw:
        proc = psutil.Process(gw.popen.pid)
        baseline = _tree_rss(proc)
        peak, stop = [baseline], threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], _tree_rss(proc))
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        r = httpx.post(
            f"{gw.url}/datasets",
            headers=auth(token),
            data={"name": "bomb", "format": "cityscapes"},
            files={"file": ("bomb.tar", png_bomb_tar(), "application/x-tar")},
            timeout=120,
        )
        elapsed = time.perf_counter() - t0
        stop.set()
        sampler.join()
    assert r.status_code == 202 and r.json()["status"] == "checking", r.text
    print(
        f"PNG bomb: 202 in {elapsed:.2f} s; gateway RSS {baseline / 2**20:.0f} MB before, "
        f"peak {peak[0] / 2**20:.0f} MB"
    )
    assert peak[0] < 500 * 2**20


def test_an_upload_over_the_size_cap_is_a_413_that_leaves_nothing(
    settings, make_user, session_factory, cityscapes_dir
):
    from fastapi.testclient import TestClient

    from services.gateway.main import create_app

    capped = settings.model_copy(update={"max_upload_bytes": 4 << 10})
    data = tar_gz(cityscapes_dir)
    assert len(data) > 4 << 10
    with TestClient(create_app(capped)) as c:
        r = c.post(
            "/datasets",
            data={"name": "too-big", "format": "cityscapes"},
            files={"file": ("cs.tar.gz", data, "application/gzip")},
            headers=auth(make_user("alice")),
        )
    assert r.status_code == 413 and "limit is 4096 bytes" in r.json()["detail"], r.text
    nothing_written(settings, session_factory)


def test_a_memory_limit_below_the_checks_own_code_ends_invalid_naming_it(
    as_user, settings, cityscapes_dir, start_checker
):
    # 300 MB cannot even map the data code: the child dies importing it (ImportError, or
    # SIGABRT in a C++ allocation) and writes no result; the dataset names the memory limit.
    start_checker(check_memory_mb=300)
    ds = checked(as_user("alice"), upload(as_user("alice"), tar_gz(cityscapes_dir)))
    assert ds["status"] == "invalid", ds
    assert "memory limit of 300 MB" in ds["error"], ds["error"]
    assert make_storage(settings, settings.datasets_bucket).list("") == []
