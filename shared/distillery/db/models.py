"""Tables: users, api_tokens, datasets, experiments, experiment_shares, stages, stage_needs,
metrics, artifacts.

Postgres is the source of truth for what exists and in what state. A stage lives
`queued -> running -> succeeded | failed | cancelled`, with progress, a lease while running and
the storage key of its last checkpoint; only `distillery.stages.lifecycle` writes its status,
lease, heartbeat, attempts and enqueue time.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSONType, list[Any]: JSONType}


class StageStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    #: A sweep's parent only: its children ended, some succeeded and some did not.
    partial = "partial"

    @property
    def finished(self) -> bool:
        return self in (
            StageStatus.succeeded,
            StageStatus.failed,
            StageStatus.cancelled,
            StageStatus.partial,
        )


_status = Enum(StageStatus, name="stage_status", native_enum=False, length=16)

#: A stage is on the shared queue's view (`GET /queue`) while it runs, or while it waits with
#: its message sent. SQL with literal statuses: the predicate of the partial index
#: `ix_stages_on_queue`, which Postgres uses for a query with the same literal predicate.
ON_QUEUE_SQL = "status = 'running' OR (status = 'queued' AND enqueued_at IS NOT NULL)"
_ts = DateTime(timezone=True)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    is_admin: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(_ts, default=utcnow)

    tokens: Mapped[list[ApiToken]] = relationship(back_populates="user", cascade="all, delete")


class ApiToken(Base):
    """Only the SHA-256 of a token is stored; the token itself is shown once at creation."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(_ts, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(_ts)
    #: After this the token no longer authenticates (None: never expires).
    expires_at: Mapped[datetime | None] = mapped_column(_ts)
    #: Set by `distillery admin revoke-token`; a revoked token never authenticates again.
    revoked_at: Mapped[datetime | None] = mapped_column(_ts)

    user: Mapped[User] = relationship(back_populates="tokens")


class Dataset(Base):
    """A dataset in its native layout under `prefix` of the datasets bucket."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    format: Mapped[str] = mapped_column(String(16))  # cityscapes | bdd100k
    prefix: Mapped[str] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(16), default="checking")  # checking|ready|invalid
    error: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[dict[str, Any] | None] = mapped_column()  # images per split, ...
    stats: Mapped[dict[str, Any] | None] = mapped_column()  # DatasetStats of the train split
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(_ts, default=utcnow)
    #: The check job (`distillery.checking`, migration 0005): the uploaded archive waiting at
    #: its staging key (None for a registered prefix, and once the check has ended), when its
    #: message was sent, the process holding the check and until when, and how often it began.
    archive_key: Mapped[str | None] = mapped_column(String(500))
    check_enqueued_at: Mapped[datetime | None] = mapped_column(_ts)
    check_holder: Mapped[str | None] = mapped_column(String(200))
    check_lease_until: Mapped[datetime | None] = mapped_column(_ts)
    check_attempts: Mapped[int] = mapped_column(default=0)

    owner: Mapped[User | None] = relationship()


class Experiment(Base):
    __tablename__ = "experiments"
    __table_args__ = (
        UniqueConstraint(
            "owner_id", "idempotency_key", name="uq_experiments_owner_idempotency_key"
        ),
        # The gateway's list is newest first, optionally of one status or owner (migration 0003).
        Index("ix_experiments_created_at_id", "created_at", "id"),
        Index("ix_experiments_status_created_at_id", "status", "created_at", "id"),
        Index("ix_experiments_owner_id_created_at_id", "owner_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column()
    status: Mapped[StageStatus] = mapped_column(_status, default=StageStatus.queued)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    #: The submitter's `Idempotency-Key`: a retried submission returns this experiment.
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    results: Mapped[dict[str, Any] | None] = mapped_column()  # the comparison table
    #: A sweep (migration 0007): its members point at the parent; `sweep` says the part each
    #: plays (`distillery.stages.sweep_plan`): the parent's plan, or a member's role, key,
    #: configuration and seed. None for a plain experiment.
    parent_id: Mapped[str | None] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), index=True
    )
    sweep: Mapped[dict[str, Any] | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(_ts, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(_ts, default=utcnow, onupdate=utcnow)

    owner: Mapped[User | None] = relationship()
    stages: Mapped[list[Stage]] = relationship(
        back_populates="experiment", order_by="Stage.position", cascade="all, delete-orphan"
    )
    artifacts: Mapped[list[Artifact]] = relationship(
        back_populates="experiment", cascade="all, delete-orphan"
    )


class ExperimentShare(Base):
    """The owner of an experiment lets another user build on it: that user's specs may name
    the experiment's artifacts (`teacher.model.checkpoint`, `distillery.access`)."""

    __tablename__ = "experiment_shares"

    experiment_id: Mapped[str] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(_ts, default=utcnow)

    user: Mapped[User] = relationship()


class Stage(Base):
    __tablename__ = "stages"
    __table_args__ = (
        UniqueConstraint("experiment_id", "name"),
        # Stages by status and enqueue time: the reconciler, the running count (migration 0003).
        Index("ix_stages_status_enqueued_at", "status", "enqueued_at"),
        # The shared queue's view in its order, a page read without a sort (migration 0008).
        Index(
            "ix_stages_on_queue",
            "enqueued_at",
            "id",
            postgresql_where=text(ON_QUEUE_SQL),
            sqlite_where=text(ON_QUEUE_SQL),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[str] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(16))  # teacher | student | distill | profile
    position: Mapped[int] = mapped_column()
    status: Mapped[StageStatus] = mapped_column(_status, default=StageStatus.queued)
    queue: Mapped[str] = mapped_column(String(100))
    epoch: Mapped[int] = mapped_column(default=0)
    epochs: Mapped[int] = mapped_column(default=0)
    step: Mapped[int] = mapped_column(default=0)
    steps: Mapped[int] = mapped_column(default=0)
    attempts: Mapped[int] = mapped_column(default=0)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None] = mapped_column(_ts)
    lease_expires_at: Mapped[datetime | None] = mapped_column(_ts)
    enqueued_at: Mapped[datetime | None] = mapped_column(_ts)
    started_at: Mapped[datetime | None] = mapped_column(_ts)
    finished_at: Mapped[datetime | None] = mapped_column(_ts)
    checkpoint_key: Mapped[str | None] = mapped_column(String(500))
    model_key: Mapped[str | None] = mapped_column(String(500))
    result: Mapped[dict[str, Any] | None] = mapped_column()
    wandb: Mapped[dict[str, Any] | None] = mapped_column()
    error: Mapped[str | None] = mapped_column(Text)

    experiment: Mapped[Experiment] = relationship(back_populates="stages")
    metrics: Mapped[list[Metric]] = relationship(
        back_populates="stage", order_by="Metric.id", cascade="all, delete-orphan"
    )


class StageNeed(Base):
    """Stage `stage_id` waits for stage `needs_id` of another experiment (a sweep's shared
    teacher, or a sweep's members for its comparison) to end before it runs
    (`distillery.stages.lifecycle`; migration 0007)."""

    __tablename__ = "stage_needs"

    stage_id: Mapped[int] = mapped_column(
        ForeignKey("stages.id", ondelete="CASCADE"), primary_key=True
    )
    needs_id: Mapped[int] = mapped_column(
        ForeignKey("stages.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class Metric(Base):
    """One row per stage and epoch (keyed by the global step at its end): the epoch's validation
    metrics and mean loss components. Written at most once per step, however often the
    stage was resumed."""

    __tablename__ = "metrics"
    __table_args__ = (
        UniqueConstraint("stage_id", "step", name="uq_metrics_stage_step"),
        # A stage's history in order and its latest row (migration 0003).
        Index("ix_metrics_stage_id_id", "stage_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    stage_id: Mapped[int] = mapped_column(ForeignKey("stages.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column()
    step: Mapped[int] = mapped_column()
    values: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(_ts, default=utcnow)

    stage: Mapped[Stage] = relationship(back_populates="metrics")


class Artifact(Base):
    """An object in the artifacts store: checkpoint, model, results, profile, report, image."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("experiment_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[str] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), index=True
    )
    stage: Mapped[str | None] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(500))
    size: Mapped[int | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(_ts, default=utcnow)

    experiment: Mapped[Experiment] = relationship(back_populates="artifacts")
