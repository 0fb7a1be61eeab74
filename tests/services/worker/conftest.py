"""Worker processes for the worker and end-to-end tests: real `celery worker` and reconciler
processes started by `tests.support.devstack`, each in its own process group (so a test can
SIGKILL a worker and its children), with the test's `settings` as DISTILLERY_* environment.
Their logs are printed at teardown (pytest shows them when a test fails)."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable

import pytest

from distillery.settings import Settings
from tests.support import devstack
from tests.support.devstack import Process, Processes


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
    return devstack.process_env(settings, **overrides)


@pytest.fixture
def start_process(processes: Processes) -> Callable[..., Process]:
    """`start_process(name, argv, env) -> Process`, stopped (and its log printed) at teardown."""

    def start(name: str, argv: list[str], env: dict[str, str]) -> Process:
        return processes.add(devstack.spawn(argv, env, processes.log_path(name), name))

    return start


@pytest.fixture
def start_worker(settings: Settings, processes: Processes) -> Callable[..., Process]:
    """`start_worker(kind="gpu", **setting_overrides) -> Process`: a real Celery worker consuming
    the test's gpu (or profiler) queue with concurrency 1, returned once it is ready."""

    def start(kind: str = "gpu", wait: bool = True, **overrides: object) -> Process:
        module = "services.worker.app" if kind == "gpu" else "services.profiler.app"
        queue = settings.gpu_queue if kind == "gpu" else settings.profiler_queue
        proc = devstack.start_worker(
            env_for(settings, **overrides),
            queue,
            1,
            log_path=processes.log_path(f"worker-{kind}"),
            app=module,
            node=f"{kind}-{uuid.uuid4().hex[:6]}@%h",
            wait=wait,
        )
        processes.add(proc)
        return proc

    return start


@pytest.fixture
def start_reconciler(
    settings: Settings, start_process: Callable[..., Process]
) -> Callable[..., Process]:
    """`start_reconciler(interval_s, stale_after_s, **setting_overrides) -> Process`."""

    def start(interval_s: float = 1.0, stale_after_s: float = 5.0, **overrides: object) -> Process:
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
