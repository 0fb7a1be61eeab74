"""`LocalStorage`, the folder that stands in for a bucket in `distillery run`."""

from __future__ import annotations

from pathlib import Path

import pytest

from distillery.storage import LocalStorage


def test_list_is_by_key_prefix_and_walks_only_the_prefix_folder(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "run")
    for key in ("a/b/x", "a/b/sub/y", "a/bc/z", "a/c/w", "top"):
        store.put_bytes(key, key.encode())
    assert [o.key for o in store.list("a/b/")] == ["a/b/sub/y", "a/b/x"]
    # A prefix is a key prefix, not a folder: "a/b" also takes "a/bc/...".
    assert [o.key for o in store.list("a/b")] == ["a/b/sub/y", "a/b/x", "a/bc/z"]
    assert [o.key for o in store.list("")] == ["a/b/sub/y", "a/b/x", "a/bc/z", "a/c/w", "top"]
    assert store.list("missing/") == [] and store.list("a/none/") == []
    assert store.list("a/b/x")[0].size == len("a/b/x")
    with pytest.raises(ValueError, match="escapes"):
        store.list("../elsewhere/")


def test_a_file_gone_during_the_walk_is_left_out(tmp_path: Path) -> None:
    """A name the walk reads but cannot stat (deleted meanwhile; here a dead link) is skipped,
    and deleting a prefix removes the rest and the folders it leaves empty."""
    store = LocalStorage(tmp_path / "run")
    store.put_bytes("ckpt/step-2/model.bin", b"w")
    (store.root / "ckpt" / "step-2" / "gone.bin").symlink_to(tmp_path / "nowhere")
    assert [o.key for o in store.list("ckpt/")] == ["ckpt/step-2/model.bin"]
    (store.root / "ckpt" / "step-2" / "gone.bin").unlink()
    assert store.delete_prefix("ckpt/step-2/") == 1
    assert not (store.root / "ckpt").exists()
