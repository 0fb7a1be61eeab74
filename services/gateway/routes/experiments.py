"""`/experiments`: submit a spec, list, inspect, follow metrics, cancel, retry, delete."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Response, status
from fastapi.exceptions import RequestValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from distillery.db import Experiment, Metric, Stage, StageStatus, User
from distillery.spec import ExperimentSpec
from distillery.stages.sweep_plan import InsertedSweep
from services.gateway import planning, queries
from services.gateway.deps import (
    ArtifactStorageDep,
    CurrentUser,
    DispatcherDep,
    ReadDep,
    RowsDep,
    SessionDep,
    StateDep,
    ensure_owner_or_admin,
)
from services.gateway.limits import MAX_OFFSET, check_submission_allowed
from services.gateway.responses import etag_matches, model_response, not_modified, rows_response
from services.gateway.schemas import (
    ExperimentDetail,
    ExperimentMetrics,
    ExperimentPage,
    ExperimentSubmitted,
    ExperimentSummary,
    MetricPoint,
    StageBrief,
    StageMetrics,
    StageOut,
    SweepMember,
    SweepOut,
)

#: A detail's stage fields (`StageOut`) other than its latest metrics (`MetricPoint`), all
#: columns of `queries.detail_query`.
STAGE_FIELDS = tuple(n for n in StageOut.model_fields if n != "latest_metrics")
METRIC_FIELDS = tuple(MetricPoint.model_fields)

#: Presigned artifact URLs live an hour; a detail's ETag changes every half hour, so a client
#: that keeps a body because of a 304 never holds a link with less than half an hour left.
URL_EPOCH_S = 1800

router = APIRouter(prefix="/experiments", tags=["experiments"])


def summary(experiment: Experiment, owner: User | None = None) -> ExperimentSummary:
    owner = owner or experiment.owner
    return ExperimentSummary(
        id=experiment.id,
        name=experiment.name,
        owner=owner.name if owner else None,
        status=experiment.status,
        cancel_requested=experiment.cancel_requested,
        parent_id=experiment.parent_id,
        created_at=experiment.created_at,
        updated_at=experiment.updated_at,
        stages=[StageBrief.model_validate(s) for s in experiment.stages],
    )


def load_experiment(session: Session, experiment_id: str) -> Experiment:
    experiment = session.scalar(
        select(Experiment)
        .where(Experiment.id == experiment_id)
        .options(selectinload(Experiment.stages), selectinload(Experiment.owner))
    )
    if experiment is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no experiment {experiment_id!r}")
    return experiment


def sweep_part(
    info: dict[str, Any] | None,
    members: list[SweepMember] | None = None,
) -> SweepOut | None:
    """An experiment's part in a sweep (`Experiment.sweep`); for the parent with its plan, its
    members and their counts by status."""
    if not info:
        return None
    if info.get("role") != "sweep":
        return SweepOut(
            role=info["role"],
            configuration=info.get("configuration"),
            seed=info.get("seed"),
            key=info.get("key"),
        )
    if members is None:  # not read (an idempotent replay of the submission)
        return SweepOut(role="sweep", plan=info.get("plan"))
    counts: dict[str, int] = {}
    for m in members:
        counts[m.status.value] = counts.get(m.status.value, 0) + 1
    return SweepOut(role="sweep", plan=info.get("plan"), counts=counts, members=members)


def sweep_member(experiment: dict[str, Any], stages: list[StageBrief]) -> SweepMember:
    info = experiment["sweep"] or {}
    return SweepMember(
        id=experiment["id"],
        name=experiment["name"],
        status=experiment["status"],
        role=info.get("role", "?"),
        configuration=info.get("configuration"),
        seed=info.get("seed"),
        key=info.get("key"),
        stages=stages,
    )


def submitted_sweep(inserted: InsertedSweep) -> list[SweepMember]:
    return [
        sweep_member(m.experiment, [StageBrief.model_validate(s) for s in m.stages])
        for m in inserted.members
    ]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ExperimentSubmitted,
    responses={
        200: {
            "model": ExperimentSubmitted,
            "description": "an earlier submission with "
            "the same Idempotency-Key: that experiment, unchanged",
        }
    },
)
def submit_experiment(
    spec: ExperimentSpec,
    state: StateDep,
    user: CurrentUser,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=200,
            description="retry-safe submission: the same key from the same user returns the "
            "first experiment (200) instead of creating another",
        ),
    ] = None,
) -> Response:
    """Validate the spec, store it, plan its stages and enqueue the first one.

    Stages (the stage registry's order): size (for a width `auto` student) -> teacher ->
    student (baseline) -> distill -> profile, minus those the spec leaves out; a teacher given
    as `teacher.model.checkpoint` is not trained. Training stages go to the GPU queue, sizing
    and profiling to the profiler queue.

    A spec with a `sweep:` section becomes a parent (the sweep, answered here with its
    `sweep.plan`: the expansion and the stages shared, and its `sweep.members`) and members
    in one transaction: each shared teacher and each student baseline (one per seed) once,
    and one child per configuration and seed, whose `distill` waits for its shared teacher.
    Once every member has ended, the parent's `compare` stage (profiler queue) stores the
    comparison (`results`); the parent ends succeeded, `partial` or failed. A grid or
    override path that does not exist is a 422 naming it.
    """
    settings = state.settings
    with state.session_factory() as session:
        if idempotency_key is None or not planning.find_submission(session, user, idempotency_key):
            check_submission_allowed(session, user, settings)  # a replay is never refused
        try:
            experiment_id, inserted = planning.create_experiment(
                session, spec, user, settings, state.dispatcher, idempotency_key=idempotency_key
            )
        except planning.PlanError as e:
            raise RequestValidationError(e.errors) from None
        if inserted is None:
            earlier = load_experiment(session, experiment_id)
            replay = ExperimentSubmitted(
                **summary(earlier).model_dump(), sweep=sweep_part(earlier.sweep)
            )
            return model_response(replay)
    if isinstance(inserted, InsertedSweep):
        parent = inserted.parent
        sweep = sweep_part(parent.experiment["sweep"], submitted_sweep(inserted))
    else:
        parent, sweep = inserted, None
    created = ExperimentSubmitted(
        **{n: parent.experiment[n] for n in queries.SUMMARY_COLUMNS},
        owner=user.name,
        stages=[StageBrief.model_validate(s) for s in parent.stages],
        sweep=sweep,
    )
    return model_response(created, status.HTTP_201_CREATED)


@router.get("", response_model=ExperimentPage)
def list_experiments(
    rows: RowsDep,
    user: CurrentUser,
    status_: Annotated[StageStatus | None, Query(alias="status")] = None,
    owner: Annotated[str | None, Query(description="owner's user name")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    with_spec: Annotated[bool, Query(description="include each experiment's full spec")] = False,
    top_level: Annotated[
        bool, Query(description="leave out the members of sweeps (their parents stay)")
    ] = False,
) -> Response:
    """Everyone's experiments, newest first, optionally of one status and/or one owner, and
    without sweeps' members (`top_level=true`).

    Items are summaries (stages and their progress); `with_spec=true` adds each full spec (the
    detail route always has it). One query: the page, its owners and stages, and the total."""
    with rows() as conn:
        filters = {
            "by_status": status_ is not None,
            "by_owner": owner is not None,
            "top_level": top_level,
        }
        params = {"status": status_, "owner": owner, "limit": limit, "offset": offset}
        result = conn.execute(queries.page_query(**filters, with_spec=with_spec), params)
        brief = queries.stage_reader(list(result.keys()), queries.BRIEF_COLUMNS)
        found = result.all()
        items: dict[str, dict[str, Any]] = {}
        for row in found:
            item = items.get(row.id)
            if item is None:
                item = items[row.id] = {n: getattr(row, n) for n in queries.ITEM_COLUMNS}
                item["stages"] = []
                if with_spec:
                    item["spec"] = row.spec
            if row.s_name is not None:
                item["stages"].append(brief(row))
        # Past the last page no row carries the count.
        total = found[0].total if found else conn.scalar(queries.count_query(**filters), params)
    page = {"items": list(items.values()), "total": total or 0, "limit": limit, "offset": offset}
    return rows_response(page)


@router.get(
    "/{experiment_id}",
    response_model=ExperimentDetail,
    responses={304: {"description": "unchanged since the `ETag` given in `If-None-Match`"}},
)
def get_experiment(
    experiment_id: str,
    rows: RowsDep,
    user: CurrentUser,
    storage: ArtifactStorageDep,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """Spec, owner, every stage's status and progress with its latest metrics, the results
    table, and presigned links to the artifacts.

    The answer carries an `ETag`; send it back as `If-None-Match` (as `distillery status
    --watch` does) and an unchanged experiment answers `304 Not Modified` after one query. The
    tag covers the experiment, every stage column and its metrics and artifacts, and changes
    every `URL_EPOCH_S` so a kept body's presigned links stay valid.
    """
    with rows() as conn:
        result = conn.execute(queries.detail_query(), {"experiment_id": experiment_id})
        stage_of = queries.stage_reader(list(result.keys()), queries.STAGE_COLUMNS)
        found = result.all()
        if not found:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no experiment {experiment_id!r}")
        head = found[0]  # its counts say whether there are metrics and artifacts to read
        member_rows = []
        if (head.sweep or {}).get("role") == "sweep":
            member_rows = conn.execute(queries.members_query(), {"parent_id": experiment_id}).all()
        salt = str(int(time.time() // URL_EPOCH_S))
        etag = queries.rows_etag([*found, *member_rows], salt=salt)
        if etag_matches(if_none_match, etag):
            return not_modified(etag)
        stage_rows = [stage_of(r) for r in found if r.s_id is not None]
        members = _members(member_rows)
        latest = {}
        if stage_rows and head.n_metrics:
            params = {"stage_ids": [s["id"] for s in stage_rows]}
            metric_rows = conn.execute(queries.latest_metrics_query(), params)
            latest = {m.stage_id: m for m in metric_rows}
        stages = []
        for s in stage_rows:
            out = {n: s[n] for n in STAGE_FIELDS}
            m = latest.get(s["id"])
            out["latest_metrics"] = None if m is None else {n: getattr(m, n) for n in METRIC_FIELDS}
            stages.append(out)
        stored = []
        if head.n_artifacts:
            params = {"experiment_id": experiment_id}
            stored = conn.execute(queries.artifacts_query(), params).all()
        artifacts = [
            {**a._asdict(), "url": storage.url(a.key)}
            for a in sorted(stored, key=lambda a: (a.stage or "", a.key))
        ]
    sweep = sweep_part(head.sweep, members)
    detail = {n: getattr(head, n) for n in queries.ITEM_COLUMNS}
    detail.update(stages=stages, spec=head.spec, results=head.results, artifacts=artifacts)
    detail["sweep"] = None if sweep is None else sweep.model_dump(mode="json")
    return rows_response(detail, headers={"ETag": etag})


def _members(rows: list[Any]) -> list[SweepMember]:
    """The members of a sweep from `queries.members_query` rows (one per stage)."""
    if not rows:
        return []
    brief = queries.stage_reader(list(rows[0]._fields), queries.BRIEF_COLUMNS)
    by_id: dict[str, tuple[dict[str, Any], list[StageBrief]]] = {}
    for row in rows:
        entry = by_id.setdefault(row.id, (row._asdict(), []))
        if row.s_name is not None:
            entry[1].append(StageBrief.model_validate(brief(row)))
    return [sweep_member(e, stages) for e, stages in by_id.values()]


@router.get("/{experiment_id}/metrics", response_model=ExperimentMetrics)
def get_metrics(experiment_id: str, read: ReadDep, user: CurrentUser) -> ExperimentMetrics:
    """Per-epoch history of every stage, in stage order."""
    with read() as session:
        experiment = load_experiment(session, experiment_id)
        rows = session.scalars(
            select(Metric)
            .join(Stage, Metric.stage_id == Stage.id)
            .where(Stage.experiment_id == experiment_id)
            .order_by(Stage.position, Metric.epoch, Metric.id)
        ).all()
        by_stage: dict[int, list[MetricPoint]] = {s.id: [] for s in experiment.stages}
        for m in rows:
            by_stage[m.stage_id].append(MetricPoint.model_validate(m))
    return ExperimentMetrics(
        experiment_id=experiment_id,
        stages=[StageMetrics(stage=s.name, history=by_stage[s.id]) for s in experiment.stages],
    )


@router.post("/{experiment_id}/cancel", response_model=ExperimentSummary)
def cancel_experiment(
    experiment_id: str, session: SessionDep, user: CurrentUser, dispatcher: DispatcherDep
) -> ExperimentSummary:
    """Owner or admin: queued stages are cancelled at once (their waiting messages dropped); a
    running stage stops at its next step and keeps its last checkpoint. The experiment is
    `cancelled` once nothing runs."""
    experiment = load_experiment(session, experiment_id)
    ensure_owner_or_admin(user, experiment.owner_id, f"experiment {experiment_id}")
    try:
        planning.cancel_experiment(session, experiment_id, dispatcher)
    except planning.Conflict as e:
        raise HTTPException(status.HTTP_409_CONFLICT, str(e)) from None
    session.expire_all()
    return summary(load_experiment(session, experiment_id))


@router.post("/{experiment_id}/retry", response_model=ExperimentSummary)
def retry_experiment(
    experiment_id: str, session: SessionDep, user: CurrentUser, dispatcher: DispatcherDep
) -> ExperimentSummary:
    """Owner or admin: queue a failed or cancelled experiment's failed and cancelled stages
    again (409 otherwise). Succeeded stages are kept; each stage resumes from its last
    checkpoint. A sweep member's retry also reruns its sweep's comparison after it."""
    experiment = load_experiment(session, experiment_id)
    ensure_owner_or_admin(user, experiment.owner_id, f"experiment {experiment_id}")
    try:
        planning.retry_experiment(session, experiment_id, dispatcher)
    except planning.Conflict as e:
        raise HTTPException(status.HTTP_409_CONFLICT, str(e)) from None
    session.expire_all()
    return summary(load_experiment(session, experiment_id))


@router.delete("/{experiment_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_experiment(
    experiment_id: str, session: SessionDep, user: CurrentUser, storage: ArtifactStorageDep
) -> Response:
    """Owner or admin, once finished or cancelled (409 otherwise): removes the experiment, its
    stages, metrics and every object under `artifacts/<id>/`; a sweep's members with it."""
    experiment = load_experiment(session, experiment_id)
    ensure_owner_or_admin(user, experiment.owner_id, f"experiment {experiment_id}")
    try:
        members = planning.ensure_deletable(session, experiment)
    except planning.Conflict as e:
        raise HTTPException(status.HTTP_409_CONFLICT, str(e)) from None
    for member_id in members:  # the members' rows go with the parent's (ON DELETE CASCADE)
        storage.delete_prefix(planning.artifacts_prefix(member_id))
    storage.delete_prefix(planning.artifacts_prefix(experiment_id))
    session.delete(experiment)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
