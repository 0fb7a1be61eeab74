"""Checkpoint uploads in the background, so that training never waits for the object store.

Each checkpoint folder is snapshotted at once (hard links: instant, and immune to the trainer
pruning the folder afterwards), then uploaded by one thread in the order the checkpoints were
written. The stage points at a checkpoint (`lifecycle.set_checkpoint`) only after all of it is in
storage, so it never points at a half-written one. `drain()` waits for every upload and raises
the first failure; the runner drains before a stage succeeds, and before it fails or is
released (then a failed upload only means the stage resumes from an older checkpoint).
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


class CheckpointUploads:
    def __init__(self, upload: Callable[[Path], None], scratch: Path) -> None:
        """`upload(snapshot)` stores one checkpoint folder (named like the original) and records
        it; it runs on the uploader thread."""
        self._upload = upload
        self._scratch = scratch
        self._queue: queue.Queue[Path | None] = queue.Queue()
        self._failure: BaseException | None = None
        self._submitted = 0
        self._thread = threading.Thread(target=self._work, name="checkpoint-uploads", daemon=True)
        self._thread.start()

    def submit(self, directory: Path) -> None:
        """Snapshot `directory` now and upload it in the background."""
        self._raise_failure()
        # A name of its own even for the same folder twice (a pause right after an epoch's
        # checkpoint writes that step again): `id()` of a freed path can come back.
        self._submitted += 1
        snapshot = (
            self._scratch / f"{directory.name}-{os.getpid()}-{self._submitted}" / directory.name
        )
        shutil.copytree(directory, snapshot, copy_function=os.link)
        self._queue.put(snapshot)

    def drain(self) -> None:
        """Wait until every submitted checkpoint is stored; raise the first upload failure."""
        self._queue.join()
        self._raise_failure()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)

    def _raise_failure(self) -> None:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def _work(self) -> None:
        while (snapshot := self._queue.get()) is not None:
            try:
                if self._failure is None:  # after a failure, later checkpoints wait for drain
                    self._upload(snapshot)
            except BaseException as exc:  # noqa: BLE001 - raised in the stage's thread
                log.warning("checkpoint upload of %s failed: %s", snapshot.name, exc)
                self._failure = exc
            finally:
                shutil.rmtree(snapshot.parent, ignore_errors=True)
                self._queue.task_done()
        self._queue.task_done()
