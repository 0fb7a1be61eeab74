"""One `Settings` for every service and the CLI, read from `DISTILLERY_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DISTILLERY_", env_file=".env", extra="ignore")

    #: SQLAlchemy URL. Postgres on the platform; `distillery run` uses SQLite in its run folder.
    database_url: str = "postgresql+psycopg://distillery:distillery@localhost:5432/distillery"
    #: Postgres schema for every table (tests give each test its own); empty = default.
    database_schema: str = ""
    #: Celery broker (Redis). Redis only carries messages; Postgres is the source of truth.
    broker_url: str = "redis://localhost:6379/0"
    #: Queue names (tests use unique names so they never share a queue).
    gpu_queue: str = "gpu"
    profiler_queue: str = "profiler"

    #: S3 / MinIO.
    s3_endpoint: str = "localhost:9000"
    s3_access_key: str = "minioadmin"
    s3_secret_key: str = "minioadmin"
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    #: Endpoint put into presigned URLs when users reach S3 by another name than the services
    #: (e.g. `s3.example.org` outside, `minio:9000` inside the cluster); empty = `s3_endpoint`.
    s3_public_endpoint: str = ""
    datasets_bucket: str = "datasets"
    artifacts_bucket: str = "artifacts"

    #: Worker-local folders: dataset cache keyed by ETag, and stage working directories.
    cache_dir: Path = Path("/var/cache/distillery")
    work_dir: Path = Path("/tmp/distillery-work")
    #: A running stage's lease; the heartbeat renews it every third of it. An expired lease
    #: means a dead worker (a dead process of the same host is taken over at once).
    lease_seconds: int = 30
    #: Redis visibility timeout: longer than the longest stage, so a slow stage is not redelivered.
    visibility_timeout_s: int = 7 * 24 * 3600

    #: The gateway runs `alembic upgrade head` when it starts (tests migrate their own schema).
    migrate_on_start: bool = True
    #: Seconds a gateway process trusts a token it has looked up (0: look up every request).
    token_cache_s: float = 10.0
    #: Requests one gateway process serves at once (its worker threads) and the database
    #: connections it keeps open for them. More threads than cores only add GIL hand-offs.
    gateway_concurrency: int = 16

    #: wandb mode for workers: online needs WANDB_API_KEY.
    wandb_mode: str = "offline"


@lru_cache
def get_settings() -> Settings:
    return Settings()
