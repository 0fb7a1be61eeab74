"""Object storage behind one small interface: a local folder (`distillery run`) or S3/MinIO.

Keys are POSIX paths inside a bucket, e.g. `artifacts/<experiment>/<stage>/model.pt`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str


class Storage(Protocol):
    """What the engine needs from an object store."""

    def put_file(self, key: str, path: Path) -> None: ...
    def get_file(self, key: str, path: Path) -> None: ...
    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> list[ObjectInfo]: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def url(self, key: str, expires_s: int = 3600) -> str: ...


def put_dir(storage: Storage, prefix: str, directory: Path) -> list[str]:
    """Upload every file under `directory` to `prefix/<relative path>`; returns the keys."""
    keys = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        key = f"{prefix.rstrip('/')}/{path.relative_to(directory).as_posix()}"
        storage.put_file(key, path)
        keys.append(key)
    return keys


def get_dir(storage: Storage, prefix: str, directory: Path) -> list[Path]:
    """Download every object under `prefix/` into `directory`, keeping relative paths."""
    prefix = prefix.rstrip("/") + "/"
    paths = []
    for obj in storage.list(prefix):
        path = directory / obj.key[len(prefix) :]
        storage.get_file(obj.key, path)
        paths.append(path)
    return paths


class LocalStorage:
    """A folder standing in for a bucket; the no-server default of `distillery run`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"key {key!r} escapes the storage root")
        return path

    def put_file(self, key: str, path: Path) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if Path(path).resolve() != dest:
            shutil.copyfile(path, dest)

    def get_file(self, key: str, path: Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise FileNotFoundError(f"no object {key!r} in {self.root}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if src != path.resolve():
            shutil.copyfile(src, path)

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)

    def get_bytes(self, key: str) -> bytes:
        src = self._path(key)
        if not src.is_file():
            raise FileNotFoundError(f"no object {key!r} in {self.root}")
        return src.read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[ObjectInfo]:
        """The objects whose key starts with `prefix`, by key.

        Only the folder the prefix names is walked, not the whole root: a run folder also holds
        the training's working folder, whose checkpoints come and go during the walk (a walk of
        the root once failed on a checkpoint folder deleted under it). A file or folder that
        disappears during the walk is left out."""
        folder = prefix.rpartition("/")[0]
        start = self._path(folder) if folder else self.root
        out = []
        for dirpath, _, filenames in os.walk(start):  # a folder gone meanwhile is skipped
            for name in filenames:
                path = Path(dirpath, name)
                key = path.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    stat = path.stat()
                except FileNotFoundError:  # removed since the folder was read (or a dead link)
                    continue
                etag = hashlib.md5(f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
                out.append(ObjectInfo(key, stat.st_size, etag))
        return sorted(out, key=lambda o: o.key)

    def delete_prefix(self, prefix: str) -> int:
        """Delete the objects under `prefix` and the folders they leave empty."""
        objs = self.list(prefix)
        for obj in objs:
            path = self._path(obj.key)
            path.unlink()
            for parent in path.parents:
                if parent == self.root or not parent.is_relative_to(self.root):
                    break
                try:
                    parent.rmdir()
                except OSError:  # not empty
                    break
        return len(objs)

    def url(self, key: str, expires_s: int = 3600) -> str:
        return self._path(key).as_uri()
