"""S3 / MinIO storage (the `Storage` protocol over the `minio` SDK) and a worker's dataset cache.

`S3Storage` is one bucket. `DatasetCache` keeps a local copy of a dataset prefix keyed by each
object's ETag, so a worker downloads a dataset once and again only the objects that changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import S3Error

from distillery.storage import ObjectInfo, Storage

if TYPE_CHECKING:
    from distillery.settings import Settings

_MISSING = {"NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"}


def _http_client(connect_timeout_s: float = 5, read_timeout_s: float = 300) -> urllib3.PoolManager:
    """Short connect timeout and few retries: a dead endpoint fails in about a second."""
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
        maxsize=16,
        retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )


class S3Storage:
    """One bucket of an S3-compatible store; keys are POSIX paths inside it.

    `public_client` (optional) signs presigned URLs for the host name users reach the store by.
    """

    def __init__(self, client: Minio, bucket: str, public_client: Minio | None = None) -> None:
        self.client = client
        self.bucket = bucket
        self.public_client = public_client or client

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r})"

    def put_file(self, key: str, path: Path) -> None:
        self.client.fput_object(self.bucket, key, str(path))

    @contextlib.contextmanager
    def _get_object(self, key: str) -> Iterator[urllib3.BaseHTTPResponse]:
        """The object's body (streamed, released on exit); `FileNotFoundError` if it is absent."""
        try:
            response = self.client.get_object(self.bucket, key)
        except S3Error as e:
            if e.code in _MISSING:
                raise FileNotFoundError(f"no object {key!r} in bucket {self.bucket!r}") from e
            raise
        try:
            yield response
        finally:
            response.close()
            response.release_conn()

    def get_file(self, key: str, path: Path) -> None:
        """Download to `path` through a temporary file in the same folder (atomic rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            with self._get_object(key) as response, open(tmp, "wb") as f:
                for chunk in response.stream(1 << 20):
                    f.write(chunk)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        self.client.put_object(
            self.bucket, key, io.BytesIO(data), len(data), content_type=content_type
        )

    def get_bytes(self, key: str) -> bytes:
        with self._get_object(key) as response:
            return response.read()

    def exists(self, key: str) -> bool:
        try:
            self.client.stat_object(self.bucket, key)
        except S3Error as e:
            if e.code in _MISSING:
                return False
            raise
        return True

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with `prefix`, sorted by key."""
        out = [
            ObjectInfo(o.object_name, o.size or 0, (o.etag or "").strip('"'))
            for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
            if not o.is_dir
        ]
        return sorted(out, key=lambda o: o.key)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix`; returns how many. An empty prefix is refused."""
        if not prefix:
            raise ValueError("refusing to delete a whole bucket: give a non-empty prefix")
        keys = [o.key for o in self.list(prefix)]
        errors = list(self.client.remove_objects(self.bucket, (DeleteObject(k) for k in keys)))
        if errors:
            raise OSError(
                f"could not delete {len(errors)} objects under {prefix!r} in {self.bucket!r}: "
                f"{errors[0]}"
            )
        return len(keys)

    def url(self, key: str, expires_s: int = 3600) -> str:
        """A presigned GET URL (signed offline; the object is not checked)."""
        return self.public_client.presigned_get_object(
            self.bucket, key, expires=timedelta(seconds=expires_s)
        )

    def bucket_exists(self) -> bool:
        return self.client.bucket_exists(self.bucket)


def make_client(settings: Settings, endpoint: str | None = None) -> Minio:
    return Minio(
        endpoint or settings.s3_endpoint,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key,
        secure=settings.s3_secure,
        region=settings.s3_region,
        http_client=_http_client(),
    )


def make_storage(settings: Settings, bucket: str) -> S3Storage:
    """An `S3Storage` for `bucket` from the `DISTILLERY_S3_*` settings."""
    public = (
        make_client(settings, settings.s3_public_endpoint) if settings.s3_public_endpoint else None
    )
    return S3Storage(make_client(settings), bucket, public_client=public)


def ensure_bucket(storage: S3Storage) -> bool:
    """Create the storage's bucket if it is absent; returns True if it was created."""
    if storage.client.bucket_exists(storage.bucket):
        return False
    try:
        storage.client.make_bucket(storage.bucket)
    except S3Error as e:
        if e.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            return False
        raise
    return True


# ------------------------------------------------------------------------------ dataset cache


MANIFEST = ".distillery-cache.json"


class DatasetCache:
    """A local copy of dataset prefixes, one folder per (bucket, prefix), keyed by object ETag.

    `materialize` downloads only objects whose ETag changed since the last call (the second call
    for an unchanged dataset downloads nothing) and removes local files whose objects are gone.
    Each file is downloaded to a temporary name and renamed, and the manifest (key -> ETag) is
    written atomically after the files it lists, so a killed worker never leaves a partial file
    that looks complete. A lock file serialises processes sharing the cache folder.
    """

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = Path(cache_dir)
        #: Objects downloaded by this instance (tests count them).
        self.downloads = 0

    def path_for(self, storage: Storage, prefix: str) -> Path:
        """The local folder that mirrors `prefix` of `storage`."""
        bucket = getattr(storage, "bucket", None) or "local"
        parts = [p for p in f"{bucket}/{prefix}".split("/") if p]
        for p in parts:
            if p in (".", "..") or "\x00" in p:
                raise ValueError(f"cannot cache prefix {prefix!r}: bad path part {p!r}")
        return self.cache_dir.joinpath(*parts)

    @contextlib.contextmanager
    def _locked(self, root: Path) -> Iterator[None]:
        root.parent.mkdir(parents=True, exist_ok=True)
        with open(root.parent / f".{root.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def materialize(self, storage: Storage, prefix: str) -> Path:
        """Bring the local copy of `prefix` up to date; returns its folder."""
        prefix = prefix.strip("/")
        root = self.path_for(storage, prefix)
        with self._locked(root):
            root.mkdir(parents=True, exist_ok=True)
            for stale in root.rglob(".*.part"):
                stale.unlink(missing_ok=True)
            manifest = self._read_manifest(root)
            objects = storage.list(prefix + "/")
            if not objects:
                raise FileNotFoundError(f"no objects under {prefix!r} in {storage!r}")
            wanted: dict[str, ObjectInfo] = {}
            for obj in objects:
                rel = obj.key[len(prefix) + 1 :]
                if not rel or rel == MANIFEST or any(p in ("", ".", "..") for p in rel.split("/")):
                    continue
                wanted[rel] = obj
            # Forget (and delete) files whose objects are gone or changed before downloading,
            # so the manifest never vouches for a file that is being replaced.
            changed = {
                rel
                for rel, obj in wanted.items()
                if manifest.get(rel) != obj.etag or not self._intact(root / rel, obj.size)
            }
            gone = set(manifest) - set(wanted)
            if changed or gone:
                for rel in gone:
                    (root / rel).unlink(missing_ok=True)
                manifest = {k: v for k, v in manifest.items() if k not in changed | gone}
                self._write_manifest(root, manifest)
            last_write = time.monotonic()
            try:
                for n, rel in enumerate(sorted(changed), 1):
                    obj = wanted[rel]
                    dest = root / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
                    try:
                        storage.get_file(obj.key, tmp)
                        size = tmp.stat().st_size
                        if size != obj.size:
                            raise OSError(
                                f"{obj.key}: downloaded {size} bytes, expected {obj.size}"
                            )
                        os.replace(tmp, dest)
                    finally:
                        tmp.unlink(missing_ok=True)
                    self.downloads += 1
                    manifest[rel] = obj.etag
                    if n % 200 == 0 or time.monotonic() - last_write > 5:
                        self._write_manifest(root, manifest)
                        last_write = time.monotonic()
            finally:
                # Also on an error or interrupt: what landed whole is not fetched again.
                if changed:
                    self._write_manifest(root, manifest)
        return root

    def evict(self, storage: Storage, prefix: str) -> None:
        """Delete the local copy of `prefix`."""
        import shutil

        root = self.path_for(storage, prefix.strip("/"))
        with self._locked(root):
            shutil.rmtree(root, ignore_errors=True)

    @staticmethod
    def _intact(path: Path, size: int) -> bool:
        try:
            return path.stat().st_size == size
        except FileNotFoundError:
            return False

    @staticmethod
    def _read_manifest(root: Path) -> dict[str, str]:
        try:
            data = json.loads((root / MANIFEST).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    @staticmethod
    def _write_manifest(root: Path, manifest: dict[str, str]) -> None:
        tmp = root / f".{MANIFEST}.{uuid.uuid4().hex[:8]}.part"
        tmp.write_text(json.dumps(manifest, sort_keys=True))
        os.replace(tmp, root / MANIFEST)
