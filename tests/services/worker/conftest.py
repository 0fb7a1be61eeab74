"""Worker processes for the worker and end-to-end tests: real `celery worker` and reconciler
processes, each in its own process group (so a test can SIGKILL a worker and its children), with
the test's `settings` as DISTILLERY_* environment. Their logs are printed at teardown (pytest shows
them when a test fails)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from distillery.settings import Settings

REPO = Path(__file__).resolve().parents[3]


def _poll(check: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.2):
    """Call `check` until it returns something truthy; returns that value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(interval_s)


@pytest.fixture
def poll() -> Callable[..., object]:
    """`poll(check, timeout_s, what, interval_s=0.2)`: wait until `check()` is truthy."""
    return _poll


def env_for(settings: Settings, **overrides: object) -> dict[str, str]:
    """The environment of a platform process: `settings` (plus overrides) as DISTILLERY_*."""
    values = settings.model_dump() | overrides
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_")}
    for name, value in values.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        env[f"DISTILLERY_{name.upper()}"] = str(value)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("WANDB_SILENT", "true")
    return env


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path
    _log: object = field(repr=False, default=None)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (a Celery parent and its pool children)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout_s: float = 15) -> None:
        if self.alive():
            self.kill_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill_group(signal.SIGKILL)
                self.popen.wait(10)
        else:  # the parent is gone; make sure no orphaned child survives it
            self.kill_group(signal.SIGKILL)
        if self._log is not None:
            self._log.close()


@pytest.fixture
def start_process(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """`start_process(name, argv, env) -> Proc`, stopped (and its log printed) at teardown."""
    procs: list[Proc] = []

    def start(name: str, argv: list[str], env: dict[str, str]) -> Proc:
        log_path = tmp_path / f"{name}-{len(procs)}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed by Proc.stop
        popen = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        proc = Proc(name, popen, log_path, log)
        procs.append(proc)
        return proc

    yield start
    for proc in reversed(procs):
        proc.stop()
    for proc in procs:
        text = proc.log()
        if text.strip():
            print(f"--- {proc.name} log ({proc.log_path}) ---\n{text[-6000:]}")


@pytest.fixture
def start_worker(
    settings: Settings, start_process: Callable[..., Proc], tmp_path: Path
) -> Callable[..., Proc]:
    """`start_worker(kind="gpu", **setting_overrides) -> Proc`: a real Celery worker consuming
    the test's gpu (or profiler) queue with concurrency 1, returned once it is ready."""

    def start(kind: str = "gpu", wait: bool = True, **overrides: object) -> Proc:
        module = "services.worker.app" if kind == "gpu" else "services.profiler.app"
        queue = settings.gpu_queue if kind == "gpu" else settings.profiler_queue
        node = f"{kind}-{uuid.uuid4().hex[:6]}@%h"
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            module,
            "worker",
            "-Q",
            queue,
            "-c",
            "1",
            "-n",
            node,
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
        ]
        proc = start_process(f"worker-{kind}", argv, env_for(settings, **overrides))
        if wait:
            _poll(lambda: " ready." in proc.log() or not proc.alive(), 60, f"{kind} worker start")
            assert proc.alive(), f"{kind} worker exited:\n{proc.log()[-3000:]}"
        return proc

    return start


@pytest.fixture
def start_reconciler(settings: Settings, start_process: Callable[..., Proc]) -> Callable[..., Proc]:
    """`start_reconciler(interval_s, stale_after_s, **setting_overrides) -> Proc`."""

    def start(interval_s: float = 1.0, stale_after_s: float = 5.0, **overrides: object) -> Proc:
        argv = [
            sys.executable,
            "-m",
            "services.worker.reconcile",
            "--interval",
            str(interval_s),
            "--stale-after",
            str(stale_after_s),
        ]
        return start_process("reconciler", argv, env_for(settings, **overrides))

    return start
