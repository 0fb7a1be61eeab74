"""A whole platform on this machine for benchmarks: a fresh Postgres schema, unique Redis queue
names, a SeaweedFS S3 server with fresh buckets, and `Settings` wired to them; processes
(gateway, workers, reconciler) are started by the caller with `devstack`.

Postgres and Redis: DISTILLERY_TEST_DATABASE_URL (default postgresql+psycopg://postgres@
127.0.0.1:5432/test) and DISTILLERY_TEST_REDIS_URL (default redis://127.0.0.1:6379/0).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
from sqlalchemy.orm import Session, sessionmaker

from distillery.db import make_engine, make_session_factory
from distillery.settings import Settings
from tests.support import devstack


@dataclass
class Platform:
    settings: Settings
    sessions: sessionmaker[Session]
    tmp: Path
    stack: ExitStack

    @property
    def env(self) -> dict[str, str]:
        return devstack.process_env(self.settings)


@contextmanager
def local_platform(prefix: str = "bench", **settings: object) -> Iterator[Platform]:
    db_url = os.environ.get(
        "DISTILLERY_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    redis_url = os.environ.get("DISTILLERY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    tag = uuid.uuid4().hex[:10]
    schema = f"{prefix}_{tag}"
    with tempfile.TemporaryDirectory() as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        stack.enter_context(devstack.scratch_schema(db_url, schema))
        engine = make_engine(db_url, schema=schema)
        stack.callback(engine.dispose)
        s3 = stack.enter_context(devstack.start_s3_server(tmp / "weed", access_key=prefix))
        from minio import Minio

        minio = Minio(s3.endpoint, s3.access_key, s3.secret_key, secure=False)
        for bucket in (f"artifacts-{tag}", f"datasets-{tag}"):
            minio.make_bucket(bucket)
        rds = redis.Redis.from_url(redis_url)

        def drop_keys() -> None:
            keys = list(rds.scan_iter(match=f"*{tag}*"))
            if keys:
                rds.delete(*keys)
            rds.close()

        stack.callback(drop_keys)
        config = Settings(
            _env_file=None,
            database_url=db_url,
            database_schema=schema,
            broker_url=redis_url,
            gpu_queue=f"gpu-{tag}",
            profiler_queue=f"profiler-{tag}",
            cpu_queue=f"cpu-{tag}",
            s3_endpoint=s3.endpoint,
            s3_access_key=s3.access_key,
            s3_secret_key=s3.secret_key,
            datasets_bucket=f"datasets-{tag}",
            artifacts_bucket=f"artifacts-{tag}",
            cache_dir=tmp / "cache",
            work_dir=tmp / "work",
            migrate_on_start=False,
            wandb_mode="disabled",
            **{"allowed_data_roots": [tmp], **settings},  # local data only in its tmp folder
        )
        yield Platform(config, make_session_factory(engine), tmp, stack)
