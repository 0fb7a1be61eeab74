"""Response models of the gateway (requests are typed by `distillery.spec` and form fields)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from distillery.db import StageStatus


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class UserOut(_Out):
    id: int
    name: str
    is_admin: bool


class StageBrief(_Out):
    name: str
    position: int
    status: StageStatus
    queue: str
    epoch: int
    epochs: int
    step: int
    steps: int


class MetricPoint(_Out):
    epoch: int
    step: int
    values: dict[str, Any]
    created_at: datetime


class StageOut(StageBrief):
    attempts: int
    worker_id: str | None
    enqueued_at: datetime | None
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None
    checkpoint_key: str | None
    model_key: str | None
    result: dict[str, Any] | None
    #: wandb run information as the worker recorded it (e.g. `url`, `id`, `project`).
    wandb: dict[str, Any] | None
    error: str | None
    #: The stage's last Metric row (values of the latest epoch), if any.
    latest_metrics: MetricPoint | None = None


class ArtifactOut(_Out):
    stage: str | None
    kind: str
    key: str
    size: int | None
    created_at: datetime
    #: A presigned GET URL, valid for an hour.
    url: str


class SweepMember(BaseModel):
    """One member of a sweep: its experiment, part and stages."""

    id: str
    name: str
    status: StageStatus
    role: str
    configuration: str | None = None
    seed: int | None = None
    key: str | None = None
    stages: list[StageBrief]


class SweepOut(BaseModel):
    """An experiment's part in a sweep (`ExperimentDetail.sweep`, `ExperimentSubmitted.sweep`)."""

    role: Literal["sweep", "teacher", "baseline", "child", "matched"]
    #: The parent's: the expansion and the stages shared (as `distillery submit --dry-run`).
    plan: dict[str, Any] | None = None
    #: The parent's: how many members are in each status.
    counts: dict[str, int] | None = None
    members: list[SweepMember] | None = None
    #: A member's: its configuration and seed (a child, a compute-matched baseline), its
    #: content key (a shared stage).
    configuration: str | None = None
    seed: int | None = None
    key: str | None = None


class ExperimentSummary(_Out):
    id: str
    name: str
    owner: str | None
    #: A sweep's parent ends `partial` when some of its children failed.
    status: StageStatus
    cancel_requested: bool
    #: The sweep this experiment is a member of (a shared teacher, a baseline, a child).
    parent_id: str | None = None
    created_at: datetime
    updated_at: datetime
    stages: list[StageBrief]


class ExperimentSubmitted(ExperimentSummary):
    """The answer to a submission: a summary and, for a sweep, its parent's part (the
    expansion and sharing `plan` and the `members` created with it)."""

    sweep: SweepOut | None = None


class ExperimentWithSpec(ExperimentSummary):
    """A list item with its full spec (`GET /experiments?with_spec=true`)."""

    spec: dict[str, Any]


class ExperimentPage(BaseModel):
    items: list[ExperimentSummary | ExperimentWithSpec]
    total: int
    limit: int
    offset: int


class ExperimentDetail(ExperimentSummary):
    spec: dict[str, Any]
    stages: list[StageOut]  # type: ignore[assignment]
    #: The final comparison table (teacher / student baseline / distilled student; a sweep's
    #: parent: its configurations, `distillery.research.summary`).
    results: dict[str, Any] | None
    artifacts: list[ArtifactOut]
    #: A sweep: its part (`role`: sweep, teacher, baseline, child); for the parent also the
    #: expansion and sharing `plan`, its members' status `counts` and the `members`.
    sweep: SweepOut | None = None


class StageMetrics(BaseModel):
    stage: str
    history: list[MetricPoint]


class ExperimentMetrics(BaseModel):
    experiment_id: str
    stages: list[StageMetrics]


class QueueEntry(BaseModel):
    experiment_id: str
    experiment_name: str
    owner: str | None
    stage: str
    queue: str
    status: StageStatus
    worker_id: str | None
    enqueued_at: datetime | None
    started_at: datetime | None
    heartbeat_at: datetime | None
    epoch: int
    epochs: int
    step: int
    steps: int


class QueueOut(BaseModel):
    """One page of the queue view; the counts are of the whole view."""

    #: Stages running, and stages waiting on a queue (all of them, not only this page's).
    running: int
    queued: int
    #: Entries in the whole view (`running + queued`); a page holds at most `limit` of them.
    total: int
    limit: int
    offset: int
    entries: list[QueueEntry]


class DatasetOut(_Out):
    id: str
    name: str
    format: str
    prefix: str
    status: Literal["checking", "ready", "invalid"] | str
    error: str | None
    owner: str | None
    created_at: datetime
    #: Per split: what the check found (images, pairs, ...).
    summary: dict[str, Any] | None
    #: Class statistics of the training split (pixel frequencies, ...).
    stats: dict[str, Any] | None


class DatasetPage(BaseModel):
    items: list[DatasetOut]
    total: int


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, str]


class SharesOut(BaseModel):
    """Who may build on an experiment's artifacts besides its owner (and admins)."""

    experiment_id: str
    users: list[str]
