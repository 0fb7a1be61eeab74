"""The dataset check job, as a cpu-queue worker runs it: claim the check, run `check.py` in a
child process under the memory and time limits while a heartbeat keeps the claim, then write
the outcome (guarded) and remove what must not stay.

A check starts over cleanly: an upload's earlier partial tree under `datasets/<id>/` is removed
before its child runs. An invalid upload leaves no object behind (its tree and its staged
archive are removed); a ready one keeps its tree and drops the staged archive. A check that
exceeds a limit ends `invalid` naming the limit; the worker process is never at risk, because
only the child holds the data.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from distillery.checking import lifecycle
from distillery.checking.check import memory_message
from distillery.checking.keys import staged_archive_key
from distillery.db import Dataset
from distillery.s3 import make_storage
from distillery.settings import Settings
from distillery.stages.lifecycle import holder_is_dead, process_identity
from distillery.storage import Storage

log = logging.getLogger(__name__)

#: A check's working folder in `Settings.work_dir`: `check-<pid of the checker>-<random>`.
WORK_PREFIX = "check-"


@dataclass
class ChildOutcome:
    """What the check's child process ended with."""

    status: str
    error: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] | None = None
    #: Peak resident memory of the child (MB) and its run time (s).
    peak_rss_mb: float = 0.0
    seconds: float = 0.0


class Heartbeat:
    """Renews the claim every third of the lease in a thread; `lost` is set once it fails."""

    def __init__(
        self, sessions: sessionmaker[Session], dataset_id: str, holder: str, lease: timedelta
    ) -> None:
        self.sessions, self.dataset_id = sessions, dataset_id
        self.holder, self.lease = holder, lease
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="check-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.lease.total_seconds() / 3):
            try:
                with self.sessions() as s:
                    held = lifecycle.heartbeat(s, self.dataset_id, self.holder, self.lease)
                    s.commit()
            except Exception:  # noqa: BLE001 - the database may be briefly away; try again
                log.exception("dataset %s: heartbeat failed", self.dataset_id)
                continue
            if not held:
                self.lost.set()
                return

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_check(
    settings: Settings, sessions: sessionmaker[Session], dataset_id: str, holder: str
) -> str | None:
    """Check dataset `dataset_id` as `holder`; returns the status it ended with, or None if
    this process did not (it is not `checking`, another live process holds it, or the claim
    was lost on the way)."""
    lease = timedelta(seconds=settings.lease_seconds)
    storage = make_storage(settings, settings.datasets_bucket)
    with sessions() as s:
        claimed = lifecycle.claim(s, dataset_id, holder, lease)
        s.commit()
    if claimed is None:
        _remove_stale_archive(sessions, storage, dataset_id)
        return None
    log.info("dataset %s: check attempt %d", dataset_id, claimed.attempt)
    with Heartbeat(sessions, dataset_id, holder, lease) as beat:
        if claimed.archive_key is not None:  # start over: a killed attempt's objects go
            storage.delete_prefix(claimed.prefix + "/")
        outcome = run_child(settings, claimed, beat.lost)
    if beat.lost.is_set():
        log.warning("dataset %s: the check was handed on; this attempt writes nothing", dataset_id)
        return None
    resources = {"peak_rss_mb": round(outcome.peak_rss_mb, 1), "seconds": round(outcome.seconds, 2)}
    ready = outcome.status == lifecycle.READY
    with sessions() as s:
        done = lifecycle.finish(
            s,
            dataset_id,
            holder,
            outcome.status,
            error=outcome.error,
            summary={**outcome.summary, "check": resources} if ready else {"check": resources},
            stats=outcome.stats if ready else None,
        )
        if not done:
            return None
        # Removed before the result is visible (the guarded update holds the row meanwhile):
        # whoever sees ready or invalid sees no staged archive, and invalid no tree.
        if claimed.archive_key is not None:
            if not ready:
                storage.delete_prefix(claimed.prefix + "/")
            storage.delete_prefix(claimed.archive_key)
        s.commit()
    log.info("dataset %s: %s (%s)", dataset_id, outcome.status, resources)
    return outcome.status


def _remove_stale_archive(
    sessions: sessionmaker[Session], storage: Storage, dataset_id: str
) -> None:
    """A duplicate message for a finished upload: its staged archive must not outlive the check
    (the attempt that finished may have died before removing it)."""
    with sessions() as s:
        ds = s.get(Dataset, dataset_id)
        finished = ds is not None and ds.status != lifecycle.CHECKING
    if finished:
        storage.delete_prefix(staged_archive_key(dataset_id))


def run_child(
    settings: Settings, claimed: lifecycle.Claimed, stop: threading.Event | None = None
) -> ChildOutcome:
    """Run `python -m distillery.checking.check` for `claimed` under `check_memory_mb` and
    `check_timeout_s`; the child is killed past the deadline (or when `stop` is set)."""
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    remove_dead_work_dirs(settings.work_dir)
    prefix = f"{WORK_PREFIX}{os.getpid()}-"
    with tempfile.TemporaryDirectory(dir=settings.work_dir, prefix=prefix) as tmp:
        request = {
            "dataset_id": claimed.dataset_id,
            "format": claimed.format,
            "prefix": claimed.prefix,
            "archive_key": claimed.archive_key,
            "memory_mb": settings.check_memory_mb,
            "work_dir": tmp,
        }
        request_path, result_path = Path(tmp) / "request.json", Path(tmp) / "result.json"
        request_path.write_text(json.dumps(request))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
        argv = [sys.executable, "-m", "distillery.checking.check", str(request_path)]
        t0 = time.monotonic()
        child = subprocess.Popen([*argv, str(result_path)], env=env)
        status, peak_kb, timed_out = _wait(child, settings.check_timeout_s, stop)
        seconds = time.monotonic() - t0
        outcome = _outcome(settings, result_path, status, timed_out)
        outcome.peak_rss_mb, outcome.seconds = peak_kb / 1024, seconds
        return outcome


def remove_dead_work_dirs(work_dir: Path) -> list[Path]:
    """Remove the folders (`check-<pid>-*`) that checks of processes of this host that no longer
    exist left in `work_dir` (a checker killed mid-check leaves its unpacked upload there);
    returns them."""
    removed = []
    for folder in work_dir.glob(f"{WORK_PREFIX}*-*"):
        pid = folder.name.removeprefix(WORK_PREFIX).split("-", 1)[0]
        if pid.isdigit() and holder_is_dead(process_identity(int(pid))):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _wait(
    child: subprocess.Popen, timeout_s: float, stop: threading.Event | None
) -> tuple[int, int, bool]:
    """Wait for `child` (killing it past `timeout_s` or once `stop` is set); returns its wait
    status, its peak resident memory in KiB (`wait4`), and whether the deadline killed it."""
    deadline = time.monotonic() + timeout_s
    timed_out = False
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline or (stop is not None and stop.is_set()):
            timed_out = time.monotonic() > deadline
            os.kill(child.pid, signal.SIGKILL)
            pid, status, usage = os.wait4(child.pid, 0)
            break
        time.sleep(0.05)
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return status, usage.ru_maxrss, timed_out


def _outcome(settings: Settings, result: Path, status: int, timed_out: bool) -> ChildOutcome:
    if timed_out:
        return ChildOutcome(
            lifecycle.INVALID,
            f"the check went over its time limit of {settings.check_timeout_s:g} s "
            "(DISTILLERY_CHECK_TIMEOUT_S)",
        )
    if result.exists():
        data = json.loads(result.read_text())
        return ChildOutcome(
            data["status"], data.get("error"), data.get("summary") or {}, data.get("stats")
        )
    code = os.waitstatus_to_exitcode(status)
    how = f"signal {-code}" if code < 0 else f"exit code {code}"
    mb = settings.check_memory_mb
    return ChildOutcome(
        lifecycle.INVALID,
        f"the check process ended with {how} and no result; perhaps {memory_message(mb)}",
    )
