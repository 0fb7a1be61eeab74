"""The read routes' SQL: statements built once with bound parameters, rows read as tuples.

Loading ORM objects (identity map, instance state, eager loaders) and building a statement per
request were most of a read's server time; these statements are compiled once per process
(SQLAlchemy caches them by their memoized key) and their rows go straight into the response
models. Writes stay on the ORM.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cache
from typing import Any

from sqlalchemy import Row, Select, bindparam, func, select
from sqlalchemy.orm import Session

from distillery.db import Artifact, Experiment, Metric, Stage, StageStatus, User

#: What a list item and a detail show of a stage (`StageBrief`).
BRIEF_COLUMNS = ("name", "position", "status", "queue", "epoch", "epochs", "step", "steps")
#: Every stage column: the detail shows most of them and its ETag covers all of them.
STAGE_COLUMNS = tuple(c.key for c in Stage.__table__.columns)
#: What a summary shows of an experiment.
SUMMARY_COLUMNS = ("id", "name", "status", "cancel_requested", "created_at", "updated_at")


def _stage_cols(*names: str) -> list[Any]:
    return [Stage.__table__.c[n].label(f"s_{n}") for n in names]


def stage_fields(row: Row[Any], names: Sequence[str]) -> dict[str, Any]:
    """The `s_<name>` columns of a row as `{name: value}`."""
    mapping = row._mapping
    return {n: mapping[f"s_{n}"] for n in names}


@cache
def page_query(*, by_status: bool, by_owner: bool, with_spec: bool) -> Select[Any]:
    """One page of experiments (newest first) with owner names and the total, joined to their
    stages in order: one row per stage (a stage-less experiment gives one row of NULLs).
    Parameters: `status`, `owner` (as asked for), `limit`, `offset`."""
    cols = [Experiment.__table__.c[n] for n in SUMMARY_COLUMNS]
    if with_spec:
        cols.append(Experiment.spec)
    page = (
        select(*cols, User.name.label("owner"), func.count().over().label("total"))
        .outerjoin(User, Experiment.owner_id == User.id)
        .order_by(Experiment.created_at.desc(), Experiment.id.desc())
        .limit(bindparam("limit"))
        .offset(bindparam("offset"))
    )
    if by_status:
        page = page.where(Experiment.status == bindparam("status"))
    if by_owner:
        page = page.where(User.name == bindparam("owner"))
    p = page.subquery("page")
    return (
        select(p, *_stage_cols(*BRIEF_COLUMNS))
        .outerjoin(Stage, Stage.experiment_id == p.c.id)
        .order_by(p.c.created_at.desc(), p.c.id.desc(), Stage.position)
    )


@cache
def count_query(*, by_status: bool, by_owner: bool) -> Select[Any]:
    """How many experiments match (for a page past the last one, whose rows carry no total)."""
    query = (
        select(func.count()).select_from(Experiment).outerjoin(User, Experiment.owner_id == User.id)
    )
    if by_status:
        query = query.where(Experiment.status == bindparam("status"))
    if by_owner:
        query = query.where(User.name == bindparam("owner"))
    return query


@cache
def detail_query() -> Select[Any]:
    """An experiment with its owner name, every column of every stage (in order) and the count
    and last id of its metrics and artifacts (for the ETag). Parameter: `experiment_id`."""
    exp_id = bindparam("experiment_id")
    metrics = (
        select(Metric.id)
        .join(Stage, Metric.stage_id == Stage.id)
        .where(Stage.experiment_id == exp_id)
        .subquery()
    )
    artifacts = (
        select(Artifact.id, Artifact.size).where(Artifact.experiment_id == exp_id).subquery()
    )
    aggregates = [
        select(func.count()).select_from(metrics).label("n_metrics"),
        select(func.max(metrics.c.id)).label("last_metric"),
        select(func.count()).select_from(artifacts).label("n_artifacts"),
        select(func.max(artifacts.c.id)).label("last_artifact"),
        select(func.sum(artifacts.c.size)).label("artifact_bytes"),
    ]
    return (
        select(
            *(Experiment.__table__.c[n] for n in SUMMARY_COLUMNS),
            Experiment.spec,
            Experiment.results,
            User.name.label("owner"),
            *(a for a in aggregates),
            *_stage_cols(*STAGE_COLUMNS),
        )
        .outerjoin(User, Experiment.owner_id == User.id)
        .outerjoin(Stage, Stage.experiment_id == Experiment.id)
        .where(Experiment.id == exp_id)
        .order_by(Stage.position)
    )


@cache
def latest_metrics_query() -> Select[Any]:
    """Each stage's last metric row. Parameter: `stage_ids` (expanding)."""
    last = (
        select(func.max(Metric.id))
        .where(Metric.stage_id.in_(bindparam("stage_ids", expanding=True)))
        .group_by(Metric.stage_id)
    )
    cols = (Metric.stage_id, Metric.epoch, Metric.step, Metric.values, Metric.created_at)
    return select(*cols).where(Metric.id.in_(last))


@cache
def artifacts_query() -> Select[Any]:
    """An experiment's artifacts by stage and key. Parameter: `experiment_id`."""
    return (
        select(Artifact.stage, Artifact.kind, Artifact.key, Artifact.size, Artifact.created_at)
        .where(Artifact.experiment_id == bindparam("experiment_id"))
        .order_by(func.coalesce(Artifact.stage, ""), Artifact.key)
    )


@cache
def queue_query() -> Select[Any]:
    """Running stages and stages waiting on a queue, by enqueue time, with their experiment's
    name and owner."""
    return (
        select(
            Stage.experiment_id,
            Experiment.name.label("experiment_name"),
            User.name.label("owner"),
            Stage.name.label("stage"),
            Stage.queue,
            Stage.status,
            Stage.worker_id,
            Stage.enqueued_at,
            Stage.started_at,
            Stage.heartbeat_at,
            Stage.epoch,
            Stage.epochs,
            Stage.step,
            Stage.steps,
        )
        .join(Experiment, Stage.experiment_id == Experiment.id)
        .outerjoin(User, Experiment.owner_id == User.id)
        .where(
            (Stage.status == StageStatus.running)
            | ((Stage.status == StageStatus.queued) & Stage.enqueued_at.is_not(None))
        )
        .order_by(Stage.enqueued_at.asc().nulls_last(), Stage.id)
    )


def detail_rows(session: Session, experiment_id: str) -> list[Row[Any]]:
    """The rows of `detail_query` (empty: no such experiment)."""
    return list(session.execute(detail_query(), {"experiment_id": experiment_id}))


def rows_etag(rows: Sequence[Row[Any]], salt: str = "") -> str:
    """A weak ETag over everything in `rows` (and `salt`)."""
    state = repr([tuple(r) for r in rows]) + "|" + salt
    return f'W/"{hashlib.sha256(state.encode()).hexdigest()[:32]}"'
