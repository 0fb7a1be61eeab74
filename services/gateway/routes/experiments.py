"""`/experiments`: submit a spec, list, inspect, follow metrics, cancel, retry, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Response, status
from fastapi.exceptions import RequestValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, defer, selectinload

from distillery.db import Experiment, Metric, Stage, StageStatus, User
from distillery.spec import ExperimentSpec
from services.gateway import planning
from services.gateway.deps import (
    ArtifactStorageDep,
    CurrentUser,
    DispatcherDep,
    SessionDep,
    SettingsDep,
    ensure_owner_or_admin,
)
from services.gateway.schemas import (
    ArtifactOut,
    ExperimentDetail,
    ExperimentMetrics,
    ExperimentPage,
    ExperimentSummary,
    MetricPoint,
    StageBrief,
    StageMetrics,
    StageOut,
)

router = APIRouter(prefix="/experiments", tags=["experiments"])


def summary(experiment: Experiment, owner: User | None = None) -> ExperimentSummary:
    owner = owner or experiment.owner
    return ExperimentSummary(
        id=experiment.id,
        name=experiment.name,
        owner=owner.name if owner else None,
        status=experiment.status,
        cancel_requested=experiment.cancel_requested,
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


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ExperimentSummary,
    responses={
        200: {
            "model": ExperimentSummary,
            "description": "an earlier submission with "
            "the same Idempotency-Key: that experiment, unchanged",
        }
    },
)
def submit_experiment(
    spec: ExperimentSpec,
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=200,
            description="retry-safe submission: the same key from the same user returns the "
            "first experiment (200) instead of creating another",
        ),
    ] = None,
) -> ExperimentSummary:
    """Validate the spec, store it, plan its stages and enqueue the first one.

    Stages (the stage registry's order): size (for a width `auto` student) -> teacher ->
    student (baseline) -> distill -> profile, minus those the spec leaves out; a teacher given
    as `teacher.model.checkpoint` is not trained. Training stages go to the GPU queue, sizing
    and profiling to the profiler queue.
    """
    try:
        experiment, created = planning.create_experiment(
            session, spec, user, settings, dispatcher, idempotency_key=idempotency_key
        )
    except planning.PlanError as e:
        raise RequestValidationError(e.errors) from None
    if not created:
        response.status_code = status.HTTP_200_OK
        return summary(load_experiment(session, experiment.id))
    return summary(experiment, owner=user)


@router.get("", response_model=ExperimentPage)
def list_experiments(
    session: SessionDep,
    user: CurrentUser,
    status_: Annotated[StageStatus | None, Query(alias="status")] = None,
    owner: Annotated[str | None, Query(description="owner's user name")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> ExperimentPage:
    """Everyone's experiments, newest first, optionally of one status and/or one owner."""
    query = select(Experiment)
    if status_ is not None:
        query = query.where(Experiment.status == status_)
    if owner is not None:
        query = query.join(User, Experiment.owner_id == User.id).where(User.name == owner)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.options(
            selectinload(Experiment.stages),
            selectinload(Experiment.owner),
            defer(Experiment.spec),
            defer(Experiment.results),
        )
        .order_by(Experiment.created_at.desc(), Experiment.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return ExperimentPage(items=[summary(e) for e in rows], total=total, limit=limit, offset=offset)


@router.get("/{experiment_id}", response_model=ExperimentDetail)
def get_experiment(
    experiment_id: str, session: SessionDep, user: CurrentUser, storage: ArtifactStorageDep
) -> ExperimentDetail:
    """Spec, owner, every stage's status and progress with its latest metrics, the results
    table, and presigned links to the artifacts."""
    experiment = session.scalar(
        select(Experiment)
        .where(Experiment.id == experiment_id)
        .options(
            selectinload(Experiment.stages),
            selectinload(Experiment.owner),
            selectinload(Experiment.artifacts),
        )
    )
    if experiment is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no experiment {experiment_id!r}")
    latest = _latest_metrics(session, [s.id for s in experiment.stages])
    stages = []
    for s in experiment.stages:
        out = StageOut.model_validate(s)
        if s.id in latest:
            out.latest_metrics = MetricPoint.model_validate(latest[s.id])
        stages.append(out)
    artifacts = [
        ArtifactOut(
            stage=a.stage,
            kind=a.kind,
            key=a.key,
            size=a.size,
            created_at=a.created_at,
            url=storage.url(a.key),
        )
        for a in sorted(experiment.artifacts, key=lambda a: (a.stage or "", a.key))
    ]
    base = summary(experiment).model_dump(exclude={"stages"})
    return ExperimentDetail(
        **base, spec=experiment.spec, stages=stages, results=experiment.results, artifacts=artifacts
    )


def _latest_metrics(session: Session, stage_ids: list[int]) -> dict[int, Metric]:
    if not stage_ids:
        return {}
    last = (
        select(func.max(Metric.id)).where(Metric.stage_id.in_(stage_ids)).group_by(Metric.stage_id)
    )
    return {m.stage_id: m for m in session.scalars(select(Metric).where(Metric.id.in_(last)))}


@router.get("/{experiment_id}/metrics", response_model=ExperimentMetrics)
def get_metrics(experiment_id: str, session: SessionDep, user: CurrentUser) -> ExperimentMetrics:
    """Per-epoch history of every stage, in stage order."""
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
    checkpoint."""
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
    stages, metrics and every object under `artifacts/<id>/`."""
    experiment = load_experiment(session, experiment_id)
    ensure_owner_or_admin(user, experiment.owner_id, f"experiment {experiment_id}")
    try:
        planning.ensure_deletable(experiment)
    except planning.Conflict as e:
        raise HTTPException(status.HTTP_409_CONFLICT, str(e)) from None
    storage.delete_prefix(planning.artifacts_prefix(experiment_id))
    session.delete(experiment)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
