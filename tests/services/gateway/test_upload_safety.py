"""Hostile uploads: clear 422s naming the file and the limit, nothing left in S3 or Postgres, and
the gateway's memory stays small while it refuses a PNG bomb."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import select

from distillery.db import Dataset
from distillery.s3 import make_storage
from tests.support import devstack
from tests.support.bombs import corrupt, png_bomb_tar, tar_gz_of, zeros_zip, zip_of

from .helpers import auth
from .test_datasets import tar_gz, upload, zipped


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
        (png_bomb_tar(), "bomb.tar", "more than the limit of 16777216 pixels"),
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
    as_user, settings, session_factory, cityscapes_dir
):
    # An image that PIL cannot decode: stored, checked, refused, and its objects removed.
    img = cityscapes_dir / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    img.write_bytes(img.read_bytes()[:40])
    r = upload(as_user("alice"), tar_gz(cityscapes_dir))
    assert r.status_code == 422 and "aachen_000000_000019_leftImg8bit.png" in r.text
    assert make_storage(settings, settings.datasets_bucket).list("") == []


def test_nobody_registers_a_prefix_under_the_uploads(as_user, settings, cityscapes_dir):
    r = upload(as_user("alice"), tar_gz(cityscapes_dir))
    assert r.status_code == 201, r.text
    prefix = r.json()["prefix"]
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
    assert r.status_code == 422 and "pixels" in r.text, r.text
    print(
        f"PNG bomb: 422 in {elapsed:.2f} s; gateway RSS {baseline / 2**20:.0f} MB before, "
        f"peak {peak[0] / 2**20:.0f} MB"
    )
    assert peak[0] < 500 * 2**20
