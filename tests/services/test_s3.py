"""`distillery.s3` against a real S3 server: S3Storage and the ETag-keyed DatasetCache."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from distillery.s3 import MANIFEST, DatasetCache, S3Storage, ensure_bucket, make_storage
from distillery.storage import LocalStorage, get_dir, put_dir


@pytest.fixture
def storage(settings) -> S3Storage:
    return make_storage(settings, settings.artifacts_bucket)


def test_storage_round_trip(storage: S3Storage, tmp_path: Path):
    src = tmp_path / "model.pt"
    src.write_bytes(b"\x00weights" * 1000)
    storage.put_file("artifacts/e1/teacher/model.pt", src)
    storage.put_bytes("artifacts/e1/results.json", b'{"miou": 0.5}', "application/json")
    storage.put_bytes("artifacts/e2/results.json", b"{}")

    assert storage.exists("artifacts/e1/teacher/model.pt")
    assert not storage.exists("artifacts/e1/teacher/missing.pt")
    assert storage.get_bytes("artifacts/e1/results.json") == b'{"miou": 0.5}'
    dest = tmp_path / "out" / "m.pt"
    storage.get_file("artifacts/e1/teacher/model.pt", dest)
    assert dest.read_bytes() == src.read_bytes()
    assert not list(dest.parent.glob(".*.part"))  # no temporary left behind

    listed = storage.list("artifacts/e1/")
    assert [o.key for o in listed] == ["artifacts/e1/results.json", "artifacts/e1/teacher/model.pt"]
    assert listed[1].size == 8000 and len(listed[1].etag) >= 32 and '"' not in listed[1].etag

    assert httpx.get(storage.url("artifacts/e1/results.json", expires_s=60)).json() == {"miou": 0.5}

    with pytest.raises(FileNotFoundError, match="missing.json"):
        storage.get_bytes("artifacts/e1/missing.json")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        storage.get_file("artifacts/e1/missing.pt", tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()

    assert storage.delete_prefix("artifacts/e1/") == 2
    assert storage.list("artifacts/e1/") == []
    assert [o.key for o in storage.list("artifacts/")] == ["artifacts/e2/results.json"]
    with pytest.raises(ValueError):
        storage.delete_prefix("")


def test_put_dir_get_dir(storage: S3Storage, tmp_path: Path, cityscapes_dir: Path):
    keys = put_dir(storage, "datasets/cs", cityscapes_dir)
    assert len(keys) == 11
    paths = get_dir(storage, "datasets/cs", tmp_path / "copy")
    assert sorted(p.relative_to(tmp_path / "copy") for p in paths) == sorted(
        p.relative_to(cityscapes_dir) for p in cityscapes_dir.rglob("*") if p.is_file()
    )


def test_ensure_bucket_and_public_endpoint(settings):
    fresh = make_storage(settings, f"{settings.artifacts_bucket}-x")
    assert ensure_bucket(fresh) is True
    assert ensure_bucket(fresh) is False
    assert fresh.bucket_exists()
    fresh.client.remove_bucket(fresh.bucket)

    public = make_storage(
        settings.model_copy(update={"s3_public_endpoint": "s3.example.org"}),
        settings.artifacts_bucket,
    )
    assert public.url("artifacts/a.txt").startswith(
        f"http://s3.example.org/{settings.artifacts_bucket}/artifacts/a.txt?"
    )


class CountingStorage:
    """A real storage that also counts downloads and can fail after N of them."""

    def __init__(self, inner, fail_after: int | None = None) -> None:
        self.inner, self.bucket = inner, getattr(inner, "bucket", "local")
        self.gets, self.fail_after = 0, fail_after

    def list(self, prefix):
        return self.inner.list(prefix)

    def get_file(self, key, path):
        if self.fail_after is not None and self.gets >= self.fail_after:
            Path(path).write_bytes(b"half")  # a partial download, then the worker dies
            raise KeyboardInterrupt("killed")
        self.gets += 1
        self.inner.get_file(key, path)

    def __repr__(self) -> str:
        return repr(self.inner)


def test_dataset_cache_downloads_each_object_once(
    storage: S3Storage, tmp_path: Path, cityscapes_dir: Path
):
    put_dir(storage, "datasets/d1", cityscapes_dir)
    cache = DatasetCache(tmp_path / "cache")
    counting = CountingStorage(storage)

    root = cache.materialize(counting, "datasets/d1")
    assert counting.gets == 11 and cache.downloads == 11
    files = sorted(p.relative_to(root) for p in root.rglob("*.png"))
    assert files == sorted(p.relative_to(cityscapes_dir) for p in cityscapes_dir.rglob("*.png"))
    img = "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    assert (root / img).read_bytes() == (cityscapes_dir / img).read_bytes()

    # Second call: nothing downloaded.
    assert cache.materialize(counting, "datasets/d1/") == root
    assert counting.gets == 11

    # A changed object is downloaded again (and only it); a deleted one disappears locally.
    storage.put_bytes(f"datasets/d1/{img}", b"new image bytes")
    mask = "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png"
    storage.delete_prefix(f"datasets/d1/{mask}")
    cache.materialize(counting, "datasets/d1")
    assert counting.gets == 12
    assert (root / img).read_bytes() == b"new image bytes"
    assert not (root / mask).exists()
    assert img in json.loads((root / MANIFEST).read_text())

    # Another cache instance on the same folder (a restarted worker) downloads nothing.
    again = CountingStorage(storage)
    DatasetCache(tmp_path / "cache").materialize(again, "datasets/d1")
    assert again.gets == 0


def test_dataset_cache_killed_worker_leaves_no_complete_looking_file(
    storage: S3Storage, tmp_path: Path, cityscapes_dir: Path
):
    put_dir(storage, "datasets/d2", cityscapes_dir)
    cache = DatasetCache(tmp_path / "cache")
    dying = CountingStorage(storage, fail_after=4)
    with pytest.raises(KeyboardInterrupt):
        cache.materialize(dying, "datasets/d2")
    root = cache.path_for(storage, "datasets/d2")
    landed = [p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST]
    assert len(landed) == 4  # only whole files under their final names
    assert all(p.read_bytes() != b"half" for p in landed)
    assert not list(root.rglob(".*.part"))

    # The next run downloads only the rest: the 4 whole files were recorded.
    resumed = CountingStorage(storage)
    cache.materialize(resumed, "datasets/d2")
    assert resumed.gets == 7
    assert all(
        (root / p.relative_to(cityscapes_dir)).read_bytes() == p.read_bytes()
        for p in cityscapes_dir.rglob("*.png")
    )

    # A local file truncated behind the cache's back is fetched again (its size is wrong).
    victim = next(iter(sorted(root.rglob("*.png"))))
    victim.write_bytes(victim.read_bytes()[:10])
    second = CountingStorage(storage)
    cache.materialize(second, "datasets/d2")
    assert second.gets == 1
    third = CountingStorage(storage)
    cache.materialize(third, "datasets/d2")
    assert third.gets == 0


def test_dataset_cache_with_local_storage_and_bad_prefixes(tmp_path: Path, cityscapes_dir: Path):
    local = LocalStorage(tmp_path / "bucket")
    put_dir(local, "datasets/d3", cityscapes_dir)
    cache = DatasetCache(tmp_path / "cache")
    root = cache.materialize(local, "datasets/d3")
    assert cache.downloads == 11 and len(list(root.rglob("*.png"))) == 10
    cache.materialize(local, "datasets/d3")
    assert cache.downloads == 11
    with pytest.raises(FileNotFoundError):
        cache.materialize(local, "datasets/none")
    with pytest.raises(ValueError):
        cache.materialize(local, "datasets/../../etc")
    cache.evict(local, "datasets/d3")
    assert not root.exists()
