"""SIGTERM means preemption (Kubernetes eviction, scale-down, `docker stop`): the running stage
writes a checkpoint at its next step, gives its lease back and is re-enqueued, so another worker
resumes it at once instead of after the lease expires.

The Celery parent gets the signal and starts its warm shutdown (`worker_shutting_down`); it
forwards SIGTERM to its pool children, whose handler only sets a flag that the stage polls
(`requested`) every step. Give pods a termination grace period longer than a step plus a
checkpoint upload.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

log = logging.getLogger(__name__)

_requested = threading.Event()


def requested() -> bool:
    """True once this process was asked to stop (SIGTERM)."""
    return _requested.is_set()


def install_in_child() -> None:
    """In a pool process, as its task starts: SIGTERM sets the flag instead of killing the
    process mid-step."""
    signal.signal(signal.SIGTERM, lambda *_: _requested.set())


def child_pids(parent: int | None = None) -> list[int]:
    """The processes whose parent is `parent` (this process by default), from /proc."""
    parent = os.getpid() if parent is None else parent
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if int(fields[1]) == parent:
            found.append(int(entry.name))
    return found


def forward_to_children() -> None:
    """In the Celery parent, at shutdown: ask every pool child to pause its stage."""
    for pid in child_pids():
        try:
            os.kill(pid, signal.SIGTERM)
            log.info("asked pool process %s to checkpoint and release its stage", pid)
        except ProcessLookupError:
            pass
