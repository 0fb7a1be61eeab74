"""Background checkpoint uploads: in order, from a snapshot the trainer cannot prune, failures
raised to the stage at `drain`."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from distillery.stages.uploads import CheckpointUploads


def _checkpoint(root: Path, name: str) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(name.encode() * 1000)
    return d


def test_uploads_run_in_order_from_snapshots_while_training_goes_on(tmp_path: Path) -> None:
    gate, seen = threading.Event(), []

    def upload(snapshot: Path) -> None:
        gate.wait(10)  # a slow object store
        seen.append((snapshot.name, (snapshot / "model.safetensors").read_bytes()[:6]))

    uploads = CheckpointUploads(upload, tmp_path / "scratch")
    for name in ("step-3", "step-6", "step-9"):
        d = _checkpoint(tmp_path / "ckpt", name)
        uploads.submit(d)  # returns at once: training does not wait
    for d in (tmp_path / "ckpt").iterdir():  # the trainer prunes old checkpoints meanwhile
        (d / "model.safetensors").unlink()
    assert seen == []
    gate.set()
    uploads.drain()
    uploads.close()
    assert seen == [("step-3", b"step-3"), ("step-6", b"step-6"), ("step-9", b"step-9")]
    assert not list((tmp_path / "scratch").iterdir())  # snapshots removed


def test_an_upload_failure_reaches_the_stage_and_later_ones_wait(tmp_path: Path) -> None:
    seen = []

    def upload(snapshot: Path) -> None:
        if snapshot.name == "step-3":
            raise ConnectionError("S3 unreachable")
        seen.append(snapshot.name)

    uploads = CheckpointUploads(upload, tmp_path / "scratch")
    uploads.submit(_checkpoint(tmp_path / "ckpt", "step-3"))
    with pytest.raises(ConnectionError, match="S3 unreachable"):
        # the failure reaches the stage at its next checkpoint, or at the latest at drain
        uploads.submit(_checkpoint(tmp_path / "ckpt", "step-6"))
        uploads.drain()
    assert seen == []  # never a newer checkpoint recorded after a failed older one
    uploads.close()


def test_the_same_checkpoint_folder_submitted_twice_is_stored_twice(tmp_path: Path) -> None:
    """A pause right after an epoch's checkpoint writes (and reports) that step again, each time
    through a new path object (the progress file's events)."""
    gate, seen = threading.Event(), []

    def upload(snapshot: Path) -> None:
        gate.wait(10)  # the first is still waiting when the second comes
        seen.append(snapshot.name)

    uploads = CheckpointUploads(upload, tmp_path / "scratch")
    reported = str(_checkpoint(tmp_path / "ckpt", "step-15"))
    for _ in range(2):
        uploads.submit(Path(reported))  # freed at once, as after a progress file's event
    gate.set()
    uploads.drain()
    uploads.close()
    assert seen == ["step-15", "step-15"]
