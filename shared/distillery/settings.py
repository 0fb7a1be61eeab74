"""One `Settings` for every service and the CLI, read from `DISTILLERY_*` environment variables."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


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
    #: Dataset checks (unpacking and validating uploads) run on this CPU queue.
    cpu_queue: str = "cpu"

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
    #: connections it keeps open for them. A request holds its thread for about a millisecond
    #: of CPU and a database round trip, so two keep a core busy; more threads only add GIL
    #: hand-offs and a longer tail: at 50 clients on 2 cores p99 was 162-168 ms with 2,
    #: 182-205 ms with 4 and 198-272 ms with 16 (`benchmarks/gateway_load.py`, README).
    gateway_concurrency: int = 2
    #: Dataset uploads one gateway process handles at once, on threads of their own (copying,
    #: checking and storing an archive takes seconds, and must not hold up the short requests).
    gateway_upload_concurrency: int = 2

    #: Folders a spec's `data.*.root`, `data.synthetic` output and checkpoint files may use on
    #: the platform (`distillery.access`): `/data/shared:/mnt/cityscapes` or a JSON list. Empty:
    #: only registered datasets (`dataset_id`). `distillery run` does not apply it.
    allowed_data_roots: Annotated[list[Path], NoDecode] = []

    #: Days a new API token is valid (`distillery admin create-user/create-token`); 0: forever.
    token_ttl_days: int = 90

    #: Dataset uploads (`distillery.archive_safety.ArchiveLimits`): entries, bytes per file,
    #: total unpacked bytes, unpacked/packed ratio, pixels per image.
    upload_max_members: int = 200_000
    upload_max_member_bytes: int = 2 << 30
    upload_max_unpacked_bytes: int = 50 << 30
    upload_max_ratio: float = 100.0
    upload_max_image_pixels: int = 4096 * 4096
    #: A dataset check (`distillery.checking`) runs in a child process under these limits: its
    #: address space in MiB (`RLIMIT_AS`) and its wall-clock seconds. Over either, the dataset
    #: ends `invalid` naming the limit; the worker carries on. The check's code (numpy, PIL,
    #: torch) alone maps about 630 MB of address space, so below ~800 every check fails.
    check_memory_mb: int = 1024
    check_timeout_s: float = 600.0

    #: Gateway limits: request body bytes (an upload: `max_upload_bytes`), experiments a user
    #: may have queued or running, submissions per user per minute (0 = no limit).
    max_request_bytes: int = 1 << 20
    max_upload_bytes: int = 20 << 30
    max_active_experiments: int = 20
    max_submissions_per_minute: int = 30

    #: Multi-node stages (`train.num_nodes > 1`, services/worker/multinode.py): the namespace
    #: the GPU worker creates their Jobs in and the image their pods run (the worker's own).
    multinode_namespace: str = "distillery"
    multinode_image: str = "distillery/worker:latest"
    #: The GPU worker's own pod (downward API in k8s/base): it owns the Jobs it creates, so they
    #: go with it. Empty outside Kubernetes.
    worker_pod_name: str = ""
    worker_pod_uid: str = ""

    #: wandb mode for workers: online needs WANDB_API_KEY.
    wandb_mode: str = "offline"

    @field_validator("allowed_data_roots", mode="before")
    @classmethod
    def _split_roots(cls, v: Any) -> Any:
        if isinstance(v, str):
            text = v.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [part for part in re.split(r"[:,]", text) if part.strip()]
        return v


@lru_cache
def get_settings() -> Settings:
    return Settings()
