"""The read routes' SQL: statements built once with bound parameters, rows read as tuples.

Loading ORM objects (identity map, instance state, eager loaders) and building a statement per
request were most of a read's server time; these statements are compiled once per process
(SQLAlchemy caches them by their memoized key) and their rows go straight into the response
models. Writes stay on the ORM.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from functools import cache
from operator import itemgetter
from typing import Any

from sqlalchemy import (
    Column,
    Enum,
    Row,
    Select,
    String,
    bindparam,
    func,
    literal_column,
    select,
    type_coerce,
)
from sqlalchemy.sql.elements import ColumnElement

from distillery.db import Artifact, Experiment, Metric, Stage, User

# Tables, not mapped classes: a statement over plain columns skips the ORM's result machinery.
E, S, U = Experiment.__table__, Stage.__table__, User.__table__
M, A = Metric.__table__, Artifact.__table__

#: What a list item and a detail show of a stage (`StageBrief`).
BRIEF_COLUMNS = ("name", "position", "status", "queue", "epoch", "epochs", "step", "steps")
#: Every stage column: the detail shows most of them and its ETag covers all of them.
STAGE_COLUMNS = tuple(c.key for c in S.columns)
#: What a summary shows of an experiment.
SUMMARY_COLUMNS = (
    "id",
    "name",
    "status",
    "cancel_requested",
    "parent_id",
    "created_at",
    "updated_at",
)
#: A list item's fields before its stages, in `ExperimentSummary`'s order (`owner` is a column
#: of the page query).
ITEM_COLUMNS = (
    "id",
    "name",
    "owner",
    "status",
    "cancel_requested",
    "parent_id",
    "created_at",
    "updated_at",
)


def plain(column: Column[Any], name: str | None = None) -> ColumnElement[Any]:
    """`column` (labelled `name`) as the database gives it: an enum column (a status) as its
    string, not turned into a `StageStatus` per row (the response models validate it anyway)."""
    name = name or column.key
    if isinstance(column.type, Enum):
        return type_coerce(column, String(column.type.length)).label(name)
    return column.label(name)


def _stage_cols(*names: str) -> list[Any]:
    return [plain(S.c[n], f"s_{n}") for n in names]


def stage_reader(keys: Sequence[str], names: tuple[str, ...]) -> Callable[[Row[Any]], dict]:
    """A function from a row of a result with these `keys` to its `s_<name>` columns as
    `{name: value}` (positions looked up once per result, not per row)."""
    get = itemgetter(*(list(keys).index(f"s_{n}") for n in names))
    return lambda row: dict(zip(names, get(row), strict=True))


@cache
def page_query(*, by_status: bool, by_owner: bool, top_level: bool, with_spec: bool) -> Select[Any]:
    """One page of experiments (newest first) with owner names and the total, joined to their
    stages in order: one row per stage (a stage-less experiment gives one row of NULLs).
    Parameters: `status`, `owner` (as asked for), `limit`, `offset`; `top_level` leaves out
    the members of sweeps.

    The page walks the index of its filter in list order and stops after `limit` rows; the
    total is `count_query` as an uncorrelated scalar subquery, computed once per statement
    (a `count() OVER ()` on the page made Postgres read, join and sort every matching row
    before the LIMIT: 2 ms per list at 3,000 experiments, growing with the table)."""
    cols = [plain(E.c[n]) for n in SUMMARY_COLUMNS]
    if with_spec:
        cols.append(E.c.spec)
    page = select(*cols, U.c.name.label("owner")).outerjoin(U, E.c.owner_id == U.c.id)
    page = _filtered(page, by_status=by_status, by_owner=by_owner, top_level=top_level)
    p = (
        page.order_by(E.c.created_at.desc(), E.c.id.desc())
        .limit(bindparam("limit"))
        .offset(bindparam("offset"))
        .subquery("page")
    )
    total = count_query(by_status=by_status, by_owner=by_owner, top_level=top_level)
    return (
        select(p, total.scalar_subquery().label("total"), *_stage_cols(*BRIEF_COLUMNS))
        .outerjoin(S, S.c.experiment_id == p.c.id)
        .order_by(p.c.created_at.desc(), p.c.id.desc(), S.c.position)
    )


def _filtered(
    query: Select[Any], *, by_status: bool, by_owner: bool, top_level: bool
) -> Select[Any]:
    """`query` (over experiments joined to their owners) with the list's filters."""
    if by_status:
        query = query.where(E.c.status == bindparam("status"))
    if by_owner:
        query = query.where(U.c.name == bindparam("owner"))
    if top_level:
        query = query.where(E.c.parent_id.is_(None))
    return query


@cache
def count_query(*, by_status: bool, by_owner: bool, top_level: bool) -> Select[Any]:
    """How many experiments match (also for a page past the last one, which has no rows)."""
    query = select(func.count()).select_from(E).outerjoin(U, E.c.owner_id == U.c.id)
    return _filtered(query, by_status=by_status, by_owner=by_owner, top_level=top_level)


@cache
def detail_query() -> Select[Any]:
    """An experiment with its owner name, every column of every stage (in order) and the count
    and last id of its metrics and artifacts (for the ETag). Parameter: `experiment_id`."""
    exp_id = bindparam("experiment_id")
    metrics = (
        select(M.c.id).join(S, M.c.stage_id == S.c.id).where(S.c.experiment_id == exp_id).subquery()
    )
    artifacts = select(A.c.id, A.c.size).where(A.c.experiment_id == exp_id).subquery()
    aggregates = [
        select(func.count()).select_from(metrics).label("n_metrics"),
        select(func.max(metrics.c.id)).label("last_metric"),
        select(func.count()).select_from(artifacts).label("n_artifacts"),
        select(func.max(artifacts.c.id)).label("last_artifact"),
        select(func.sum(artifacts.c.size)).label("artifact_bytes"),
    ]
    return (
        select(
            *(plain(E.c[n]) for n in SUMMARY_COLUMNS),
            E.c.spec,
            E.c.results,
            E.c.sweep,
            U.c.name.label("owner"),
            *(a for a in aggregates),
            *_stage_cols(*STAGE_COLUMNS),
        )
        .outerjoin(U, E.c.owner_id == U.c.id)
        .outerjoin(S, S.c.experiment_id == E.c.id)
        .where(E.c.id == exp_id)
        .order_by(S.c.position)
    )


@cache
def members_query() -> Select[Any]:
    """A sweep's members (oldest first) with their part and each stage's status and progress
    (one row per stage). Parameter: `parent_id`."""
    return (
        select(
            E.c.id,
            E.c.name,
            plain(E.c.status),
            E.c.sweep,
            E.c.updated_at,
            *_stage_cols(*BRIEF_COLUMNS),
        )
        .outerjoin(S, S.c.experiment_id == E.c.id)
        .where(E.c.parent_id == bindparam("parent_id"))
        .order_by(E.c.created_at, E.c.id, S.c.position)
    )


@cache
def latest_metrics_query() -> Select[Any]:
    """Each stage's last metric row. Parameter: `stage_ids` (expanding)."""
    last = (
        select(func.max(M.c.id))
        .where(M.c.stage_id.in_(bindparam("stage_ids", expanding=True)))
        .group_by(M.c.stage_id)
    )
    cols = (M.c.stage_id, M.c.epoch, M.c.step, M.c["values"], M.c.created_at)
    return select(*cols).where(M.c.id.in_(last))


@cache
def artifacts_query() -> Select[Any]:
    """An experiment's artifacts (the route sorts them). Parameter: `experiment_id`."""
    cols = (A.c.stage, A.c.kind, A.c.key, A.c.size, A.c.created_at)
    return select(*cols).where(A.c.experiment_id == bindparam("experiment_id"))


#: A stage is on the queue's view while it runs, or while it waits with its message sent: the
#: predicate of the partial index `ix_stages_on_queue` (`distillery.db.models.ON_QUEUE_SQL`), with
#: the statuses as literals in the SQL, as there, so that Postgres matches the index also under
#: a generic plan (bound parameters would hide them from the planner).
ON_QUEUE = (S.c.status == literal_column("'running'")) | (
    (S.c.status == literal_column("'queued'")) & S.c.enqueued_at.is_not(None)
)


def _queue_counts() -> list[ColumnElement[Any]]:
    """How many stages the whole queue view holds (`total`), and how many of them run
    (`running`): uncorrelated scalar subqueries (computed once per statement), each a range of
    `ix_stages_status_enqueued_at`."""
    status, sent = S.c.status, S.c.enqueued_at.is_not(None)
    running = select(func.count()).where(status == literal_column("'running'"))
    waiting = select(func.count()).where(status == literal_column("'queued'"), sent)
    running_n = running.select_from(S).scalar_subquery()
    waiting_n = waiting.select_from(S).scalar_subquery()
    return [(running_n + waiting_n).label("total"), running_n.label("running")]


@cache
def queue_query() -> Select[Any]:
    """One page of the running stages and stages waiting on a queue, by enqueue time, with their
    experiment's name and owner, and the counts of the whole view (`total`, `running`) on every
    row. Parameters: `limit`, `offset`.

    The page reads the partial index `ix_stages_on_queue` (the view's rows in this order) and
    stops after `limit` rows; window counts made Postgres read and sort the whole view first
    (3.7 ms per page at 3,000 waiting stages, growing with the queue)."""
    return (
        select(
            S.c.experiment_id,
            E.c.name.label("experiment_name"),
            U.c.name.label("owner"),
            S.c.name.label("stage"),
            S.c.queue,
            plain(S.c.status),
            S.c.worker_id,
            S.c.enqueued_at,
            S.c.started_at,
            S.c.heartbeat_at,
            S.c.epoch,
            S.c.epochs,
            S.c.step,
            S.c.steps,
            *_queue_counts(),
        )
        .join(E, S.c.experiment_id == E.c.id)
        .outerjoin(U, E.c.owner_id == U.c.id)
        .where(ON_QUEUE)
        .order_by(S.c.enqueued_at.asc().nulls_last(), S.c.id)
        .limit(bindparam("limit"))
        .offset(bindparam("offset"))
    )


@cache
def queue_count_query() -> Select[Any]:
    """`total` and `running` of the whole queue view (for a page past its end, whose rows carry
    no counts)."""
    return select(*_queue_counts())


def rows_etag(rows: Sequence[Row[Any]], salt: str = "") -> str:
    """A weak ETag over everything in `rows` (and `salt`)."""
    state = repr([tuple(r) for r in rows]) + "|" + salt
    return f'W/"{hashlib.sha256(state.encode()).hexdigest()[:32]}"'
