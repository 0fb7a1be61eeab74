"""A stage's life: the only code that writes a stage's status, lease, heartbeat, attempts and
enqueue time (and the experiment's status that rolls them up).

```
queued ──claim──► running ──succeed──► succeeded
  ▲  ▲              │ │ └────fail────► failed ────┐
  │  │              │ └──cancelled───► cancelled ─┤ retry
  │  └──release─────┘  (preempted: SIGTERM)       │
  │  └──requeue_lost── (lease expired: worker dead)
  │  └──succeed/fail── (re-run requested: RERUN)  │
  └──────────────────────────────────────────────┘
```

A stage may also need stages of other experiments (`stage_needs`: a sweep's child `distill`
needs the shared teacher; the sweep's `compare` needs every member's stages): it is not
claimed before they have ended, and fails (with the stages after it) when one of them did not
succeed, unless its kind runs `after_failures`. A sweep member's ending rolls up its parent:
running while members run, then succeeded, `partial` or failed once its comparison has run.

A retried experiment (`retry`) queues again, with its own failed and cancelled stages:
- the stages of other experiments that failed only because they needed one of those (their
  error begins with `NOT_RUN_NEEDS`, written by `_fail_needing`; a compute-matched baseline
  whose child failed), and so on for theirs (`_reopen_dependants`): they wait for the retried
  stages again and are sent when those end (`ready_after`);
- its sweep's ended comparison (`_reopen_parent`). A comparison still running is not stopped:
  it is marked (its `error` begins with `RERUN`), and when it ends, it is queued again instead
  of succeeding or failing on what it read before the retry (`_rerun_if_requested`; not when
  it is cancelled); it is then sent when the retried stages have ended (`ready_after`, or
  `next_stage` by its own worker when they already have). A mark rather than stopping it at
  once: two runs of one comparison never overlap (the stale one could store its report last).

Every function is a guarded update in the caller's transaction: a stage is changed only from
the status (and, while running, by the lease holder) the transition expects, so a worker that
lost its lease, a duplicate message or a racing cancel can never overwrite another's write.
Workers are named ``<host>/<pid namespace>:<pid>`` (`process_identity`); a lease held by a
process of this host and PID namespace that no longer exists is provably dead and is taken over
at once instead of waiting for it to expire. Containers that share a host name (host
networking) have their own PID namespaces, so one never judges another's process.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, object_session

from distillery.db.models import Experiment, Metric, Stage, StageNeed, StageStatus
from distillery.registry import STAGES

log = logging.getLogger(__name__)

#: How the error of a stage that failed only because a stage it needs did not succeed begins
#: (`_fail_needing`); such a stage is queued again when that stage is retried (`retry`).
NOT_RUN_NEEDS = "not run: it needs stage "
#: How the error of a running stage begins when a stage it needs was queued again while it ran
#: (`_reopen_parent`): when it ends it is queued again instead (`_rerun_if_requested`).
RERUN = "re-run requested: "


class StageLost(RuntimeError):
    """This worker no longer holds the stage (its lease expired and the stage was handed on, or
    it was cancelled); the worker stops without writing."""


def now() -> datetime:
    return datetime.now(UTC)


def aware(ts: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; everything stored is UTC."""
    return ts.replace(tzinfo=UTC) if ts is not None and ts.tzinfo is None else ts


def this_host() -> str:
    """``<host name>/<PID namespace>``: where a process id means the same process."""
    try:
        namespace = os.readlink("/proc/self/ns/pid").removeprefix("pid:").strip("[]")
    except OSError:
        namespace = "?"
    return f"{socket.gethostname()}/{namespace}"


def process_identity(pid: int | None = None) -> str:
    """The worker id of this process: ``<host>/<pid namespace>:<pid>``."""
    return f"{this_host()}:{os.getpid() if pid is None else pid}"


def holder_is_dead(worker_id: str | None) -> bool:
    """True if `worker_id` (`process_identity`) names a process of this host and PID
    namespace that no longer exists."""
    if not worker_id or ":" not in worker_id:
        return False
    host, _, pid = worker_id.rpartition(":")
    if host != this_host() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def finite_json(value: Any) -> Any:
    """`value` with every non-finite float replaced by None: JSON has no NaN or Infinity, and
    nothing non-finite is ever stored."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    if isinstance(value, int | str | bool) or value is None:
        return value
    try:
        return finite_json(float(value))  # numpy / torch scalars
    except (TypeError, ValueError):
        return str(value)


# ------------------------------------------------------------------------------------ claim


@dataclass(frozen=True)
class Part:
    """A stage of another experiment that a stage needed, as it ended (`Claimed.needed`)."""

    experiment_id: str
    #: The experiment's part in its sweep (`Experiment.sweep`), if any.
    sweep: dict[str, Any] | None
    name: str
    status: str
    result: dict[str, Any] | None
    model_key: str | None
    error: str | None
    #: Seconds from the stage's first start to its end (None if it never started).
    wall_time_s: float | None


@dataclass(frozen=True)
class Claimed:
    """A stage this worker now holds."""

    stage_id: int
    name: str
    experiment_id: str
    spec: dict[str, Any]
    checkpoint_key: str | None
    attempts: int
    #: (name, result, model_key) of the experiment's succeeded earlier stages.
    earlier: tuple[tuple[str, dict[str, Any] | None, str | None], ...]
    #: The stages of other experiments it needed (all ended; `needed`).
    needed: tuple[Part, ...] = ()


def claim(s: Session, stage_id: int, worker: str, lease: timedelta) -> Claimed | None:
    """Take the stage for `worker`, or None if it must not run now: finished, waiting for an
    earlier stage or a stage it needs, held by a live worker, or its experiment was cancelled.
    A stage whose needed stage did not succeed fails here (unless its kind runs
    `after_failures`)."""
    stage = s.execute(
        select(Stage).where(Stage.id == stage_id).with_for_update()
    ).scalar_one_or_none()
    if stage is None:
        log.warning("stage %s does not exist (deleted?)", stage_id)
        return None
    exp = stage.experiment
    if stage.status.finished:
        return None
    t = now()
    if stage.status == StageStatus.running and stage.worker_id != worker:
        expires = aware(stage.lease_expires_at)
        if expires is not None and expires > t and not holder_is_dead(stage.worker_id):
            log.info("stage %s is held by %s; skipping", stage_id, stage.worker_id)
            return None
        log.warning(
            "stage %s: taking over from %s (dead or lease expired)", stage_id, stage.worker_id
        )
    if exp.cancel_requested:
        if stage.status == StageStatus.running:  # its worker died after the cancel
            _end(stage, StageStatus.cancelled, "cancelled by request")
        _cancel_queued(exp, "cancelled before it started")
        _roll_up(exp)
        return None
    earlier = [x for x in exp.stages if x.position < stage.position]
    if any(x.status != StageStatus.succeeded for x in earlier):
        log.info("stage %s waits for earlier stages", stage_id)
        return None
    needed = needed_stages(s, stage.id)
    if any(not x.status.finished for x in needed):
        log.info("stage %s waits for the stages it needs", stage_id)
        return None
    bad = next((x for x in needed if x.status != StageStatus.succeeded), None)
    if bad is not None and not _after_failures(stage):
        _fail_needing(stage, bad)
        return None
    stage.status = StageStatus.running
    stage.worker_id = worker
    stage.started_at = stage.started_at or t
    stage.heartbeat_at = t
    stage.lease_expires_at = t + lease
    stage.attempts += 1
    stage.error = None
    exp.status = StageStatus.running
    _roll_up_parent(exp)  # a sweep runs once a member does
    return Claimed(
        stage_id=stage.id,
        name=stage.name,
        experiment_id=exp.id,
        spec=exp.spec,
        checkpoint_key=stage.checkpoint_key,
        attempts=stage.attempts,
        earlier=tuple((x.name, x.result, x.model_key) for x in earlier),
        needed=tuple(_part(x) for x in needed),
    )


def _part(stage: Stage) -> Part:
    start, end = aware(stage.started_at), aware(stage.finished_at)
    return Part(
        experiment_id=stage.experiment_id,
        sweep=stage.experiment.sweep,
        name=stage.name,
        status=stage.status.value,
        result=stage.result,
        model_key=stage.model_key,
        error=stage.error,
        wall_time_s=(end - start).total_seconds() if start and end else None,
    )


# ------------------------------------------------------------------ stages of other experiments


def needed_stages(s: Session, stage_id: int) -> list[Stage]:
    """The stages of other experiments that stage `stage_id` waits for (`stage_needs`)."""
    q = select(Stage).join(StageNeed, StageNeed.needs_id == Stage.id)
    return list(s.scalars(q.where(StageNeed.stage_id == stage_id).order_by(Stage.id)))


def needing_stages(s: Session, stage_id: int) -> list[Stage]:
    """The stages that wait for stage `stage_id`."""
    q = select(Stage).join(StageNeed, StageNeed.stage_id == Stage.id)
    return list(s.scalars(q.where(StageNeed.needs_id == stage_id).order_by(Stage.id)))


def add_needs(s: Session, stage_id: int, needs: list[int]) -> None:
    """Record that stage `stage_id` waits for the stages `needs` (at planning)."""
    for needed in needs:
        s.add(StageNeed(stage_id=stage_id, needs_id=needed))


def _after_failures(stage: Stage) -> bool:
    return bool(STAGES.get(stage.name).after_failures)


def _fail_needing(stage: Stage, bad: Stage) -> None:
    """`stage` (queued) cannot run: `bad`, which it needs, did not succeed. It fails, the stages
    after it are cancelled, and so on for the stages that need those."""
    _end(
        stage,
        StageStatus.failed,
        f"{NOT_RUN_NEEDS}{bad.name} of experiment {bad.experiment_id}, which {bad.status.value}",
    )
    exp = stage.experiment
    ended = [x for x in exp.stages if x.status == StageStatus.queued]
    _cancel_queued(exp, f"not run: stage {stage.name} failed")
    _roll_up(exp)
    _end_needing([stage, *ended])


def _end_needing(ended: list[Stage]) -> None:
    """After `ended` stages failed or were cancelled: fail the queued stages that need them
    (except kinds that run `after_failures`, and stages being cancelled themselves)."""
    for stage in ended:
        s = object_session(stage)
        if s is None:
            continue
        for other in needing_stages(s, stage.id):
            if other.experiment.cancel_requested:
                continue  # being cancelled itself
            if other.status == StageStatus.queued and not _after_failures(other):
                _fail_needing(other, stage)


def ready_after(s: Session, stage_id: int) -> list[Stage]:
    """The queued stages of other experiments that may run now that stage `stage_id` has ended
    (whatever its status): each stage it needs has ended and its earlier stages succeeded.
    The caller sends them (a duplicate message is harmless)."""
    out = []
    for other in needing_stages(s, stage_id):
        if other.status != StageStatus.queued or other.experiment.cancel_requested:
            continue
        earlier = [x for x in other.experiment.stages if x.position < other.position]
        if any(x.status != StageStatus.succeeded for x in earlier):
            continue
        if all(x.status.finished for x in needed_stages(s, other.id)):
            out.append(other)
    return out


def waits_for_others(s: Session, stage: Stage) -> bool:
    """Whether `stage` still waits for a stage of another experiment."""
    return any(not x.status.finished for x in needed_stages(s, stage.id))


def runnable_since(s: Session, stage: Stage) -> datetime | None:
    """When `stage` became runnable: its experiment's submission for a first stage, else the
    end of the stage before it; and not before the last of the stages it needs ended."""
    exp = stage.experiment
    before = [x for x in exp.stages if x.position < stage.position]
    since = (
        aware(max(before, key=lambda x: x.position).finished_at)
        if before
        else aware(exp.created_at)
    )
    ends = [aware(x.finished_at) for x in needed_stages(s, stage.id)]
    times = [t for t in (since, *ends) if t is not None]
    return max(times) if times else None


# ---------------------------------------------------------------------------- while running


def _held(stage_id: int, worker: str) -> Any:
    """The guard of every write by the holder: still running, still this worker's."""
    return (
        (Stage.id == stage_id) & (Stage.status == StageStatus.running) & (Stage.worker_id == worker)
    )


def renew(
    s: Session,
    stage_id: int,
    worker: str,
    lease: timedelta,
    progress: tuple[int, int, int, int] | None = None,
) -> None:
    """Extend the lease (and record progress: epoch, epochs, step, steps); `StageLost` if the
    stage is no longer this worker's."""
    t = now()
    values: dict[str, Any] = {"heartbeat_at": t, "lease_expires_at": t + lease}
    if progress is not None:
        values.update(zip(("epoch", "epochs", "step", "steps"), progress, strict=True))
    r = s.execute(update(Stage).where(_held(stage_id, worker)).values(**values))
    if r.rowcount == 0:
        raise StageLost(f"this worker ({worker}) no longer holds stage {stage_id}")


def heartbeat(s: Session, stage_id: int, worker: str, lease: timedelta) -> bool:
    """Extend the lease if this worker holds the stage; False if it does not (any more)."""
    t = now()
    r = s.execute(
        update(Stage)
        .where(_held(stage_id, worker))
        .values(heartbeat_at=t, lease_expires_at=t + lease)
    )
    return r.rowcount > 0


def record_metric(
    s: Session, stage_id: int, worker: str, epoch: int, step: int, values: dict[str, Any]
) -> None:
    """The epoch's metric row, exactly once per (stage, step) whatever was written before (a
    resumed stage writes its epoch again); never a non-finite number."""
    _require_held(s, stage_id, worker)
    s.execute(delete(Metric).where(Metric.stage_id == stage_id, Metric.step == step))
    s.add(Metric(stage_id=stage_id, epoch=epoch, step=step, values=finite_json(values)))


def set_checkpoint(s: Session, stage_id: int, worker: str, key: str) -> str | None:
    """Point the stage at its newest checkpoint (already complete in storage); returns the
    previous key (the caller deletes it)."""
    stage = _require_held(s, stage_id, worker)
    old, stage.checkpoint_key = stage.checkpoint_key, key
    return old


def cancel_requested(s: Session, stage_id: int) -> bool:
    stage = s.get(Stage, stage_id)
    return stage is None or bool(stage.experiment.cancel_requested)


def _require_held(s: Session, stage_id: int, worker: str) -> Stage:
    stage = s.execute(
        select(Stage).where(_held(stage_id, worker)).with_for_update()
    ).scalar_one_or_none()
    if stage is None:
        raise StageLost(f"this worker ({worker}) no longer holds stage {stage_id}")
    return stage


# ------------------------------------------------------------------------------------ endings


def succeed(
    s: Session,
    stage_id: int,
    worker: str,
    *,
    result: dict[str, Any] | None,
    model_key: str | None,
    wandb: dict[str, Any] | None,
) -> Experiment:
    """The stage succeeded; returns its experiment (status `succeeded` once every stage is).
    A stage whose re-run was requested while it ran is queued again instead, and nothing of
    this run is recorded (`_rerun_if_requested`; `next_stage` then returns it)."""
    stage = _require_held(s, stage_id, worker)
    if _rerun_if_requested(stage):
        return stage.experiment
    stage.status = StageStatus.succeeded
    stage.finished_at = now()
    stage.lease_expires_at = None
    stage.result = finite_json(result)
    stage.wandb = finite_json(wandb)
    stage.model_key = model_key
    _roll_up(stage.experiment)
    return stage.experiment


def fail(
    s: Session,
    stage_id: int,
    worker: str,
    error: str,
    *,
    status: StageStatus = StageStatus.failed,
    only_if_mine: bool = False,
) -> bool:
    """End the stage as failed (or cancelled) with `error`; later stages will not run. A stage
    another worker holds is left alone when `only_if_mine` (or when this worker lost it). A
    failed stage whose re-run was requested while it ran is queued again instead
    (`_rerun_if_requested`; `next_stage` then returns it)."""
    stage = s.get(Stage, stage_id, with_for_update=True)
    if stage is None or stage.status.finished:
        return False
    if stage.status == StageStatus.running and stage.worker_id != worker:
        return False
    if only_if_mine and stage.status != StageStatus.running:
        return False
    if status == StageStatus.failed and _rerun_if_requested(stage):
        log.warning("stage %s failed (%s); it runs again as requested", stage_id, error)
        return True
    _end(stage, status, error)
    exp = stage.experiment
    ended = [x for x in exp.stages if x.status == StageStatus.queued]
    _cancel_queued(exp, f"not run: stage {stage.name} {status.value}")
    _roll_up(exp)
    _end_needing([stage, *ended])
    return True


def release(s: Session, stage_id: int, worker: str, reason: str) -> bool:
    """Give the stage back to the queue (preemption): its checkpoint is in storage, so the next
    worker resumes it at once. Returns False if this worker did not hold it."""
    r = s.execute(
        update(Stage)
        .where(_held(stage_id, worker))
        .values(
            status=StageStatus.queued,
            worker_id=None,
            lease_expires_at=None,
            enqueued_at=None,
            error=reason,
        )
    )
    if r.rowcount:
        _roll_up(s.get(Stage, stage_id).experiment)
    return r.rowcount > 0


# ------------------------------------------------------------------- requests from outside


def request_cancel(s: Session, experiment: Experiment) -> list[int]:
    """Cancel an experiment: queued stages now (a conditional update: a worker that has just
    claimed one wins), a running one at its next step (its worker reads `cancel_requested`).
    Returns the ids of the stages cancelled here (their queued messages can be dropped). A
    sweep's parent cancels its members too."""
    ids: list[int] = []
    if is_sweep(experiment):
        live = [m for m in members(s, experiment.id) if not m.status.finished]
        for member in live:  # first, so that no member fails for another's cancel
            member.cancel_requested = True
        for member in live:
            ids += request_cancel(s, member)
    experiment.cancel_requested = True
    ids += [st.id for st in experiment.stages if st.status == StageStatus.queued]
    s.execute(
        update(Stage)
        .where(Stage.experiment_id == experiment.id, Stage.status == StageStatus.queued)
        .values(
            status=StageStatus.cancelled, finished_at=now(), error="cancelled before it started"
        )
        .execution_options(synchronize_session=False)
    )
    s.flush()
    for st in experiment.stages:
        s.refresh(st)
    _roll_up(experiment)
    _end_needing([st for st in experiment.stages if st.id in ids])
    return ids


def retry(s: Session, experiment: Experiment) -> Stage | None:
    """Queue the failed and cancelled stages of a finished experiment again; succeeded stages
    are kept and each stage resumes from its last checkpoint. The stages of other experiments
    that failed only for those are queued again too (`_reopen_dependants`), and a sweep
    member's parent runs its comparison again (`_reopen_parent`). Returns the stage to
    enqueue (the others wait for what they need and are sent when it ends)."""
    if not experiment.status.finished or experiment.status == StageStatus.succeeded:
        raise ValueError(f"experiment {experiment.id} is {experiment.status.value}")
    _reopen(s, experiment)
    return next((st for st in experiment.stages if st.status == StageStatus.queued), None)


def _reopen(s: Session, experiment: Experiment) -> None:
    """`retry`'s work: requeue the experiment's failed and cancelled stages, its parent's
    comparison and the stages that failed for them; roll the statuses up."""
    experiment.cancel_requested = False
    requeued = [
        st for st in experiment.stages if st.status in (StageStatus.failed, StageStatus.cancelled)
    ]
    for st in requeued:
        _requeue(st)
    _reopen_parent(s, experiment)
    _roll_up(experiment)
    _reopen_dependants(s, requeued)


def _reopen_dependants(s: Session, requeued: list[Stage]) -> None:
    """The stages `requeued` are queued again: reopen (`_reopen`) each experiment with a stage
    that needs one of them and failed only for a stage it needs (`NOT_RUN_NEEDS`; a
    compute-matched baseline whose child's `distill` failed), once none of the stages it needs
    has failed or been cancelled any more, and none of its own stages failed on its own. Its
    stages then wait for the retried ones (`ready_after` sends them), and so on for the stages
    that failed for its (transitively)."""
    for stage in requeued:
        for other in needing_stages(s, stage.id):
            exp = other.experiment
            if not _failed_for_needs(other) or exp.cancel_requested:
                continue
            if any(not _failed_for_needs(x) for x in exp.stages if x.status == StageStatus.failed):
                continue  # a stage of its own failed on its own: retried by request only
            bad = (StageStatus.failed, StageStatus.cancelled)
            if any(x.status in bad for x in needed_stages(s, other.id)):
                continue  # another stage it needs still did not succeed
            log.info(
                "stage %s failed for stage %s, which is retried: queued again", other.id, stage.id
            )
            _reopen(s, exp)


def _failed_for_needs(stage: Stage) -> bool:
    """Whether `stage` failed only because a stage it needs did not succeed (`_fail_needing`)."""
    return stage.status == StageStatus.failed and (stage.error or "").startswith(NOT_RUN_NEEDS)


def _reopen_parent(s: Session, member: Experiment) -> None:
    """`member` of a sweep is retried: its parent's ended stages (the comparison) are queued
    again. They need every member's stages (`stage_needs`), so they wait for the retried ones
    and are sent when those end (`ready_after`); the parent then runs again until they end. A
    parent stage still running is marked to run again when it ends (`RERUN`,
    `_rerun_if_requested`): what it read is stale."""
    if member.parent_id is None:
        return
    parent = s.execute(
        select(Experiment).where(Experiment.id == member.parent_id).with_for_update()
    ).scalar_one_or_none()
    if parent is None:
        return
    parent.cancel_requested = False
    for st in parent.stages:
        if st.status.finished:
            _requeue(st)
        elif st.status == StageStatus.running:
            st.error = f"{RERUN}member {member.id} was retried while it ran"
    s.flush()  # before `_roll_up_parent` reads the parent's row again


def _rerun_if_requested(stage: Stage) -> bool:
    """At the end of running `stage` (held by its worker): if a stage it needs was queued again
    while it ran (its error begins with `RERUN`) and its experiment is not being cancelled, it
    is queued again rather than ended (its note kept, no result), to run once what it needs
    has ended. Returns whether it was."""
    if not (stage.error or "").startswith(RERUN) or stage.experiment.cancel_requested:
        return False
    stage.status = StageStatus.queued
    stage.worker_id = None
    stage.lease_expires_at = None
    stage.enqueued_at = None
    _roll_up(stage.experiment)
    return True


def _requeue(stage: Stage) -> None:
    """A finished stage queued again, as it was before it was first sent."""
    stage.status = StageStatus.queued
    stage.finished_at = None
    stage.worker_id = None
    stage.lease_expires_at = None
    stage.enqueued_at = None
    stage.error = None


def retry_sweep(s: Session, parent: Experiment) -> list[Stage]:
    """Retry a finished sweep that did not fully succeed: each failed or cancelled member
    (`retry`; a child whose shared teacher is retried waits for it again) and the sweep's own
    comparison. Returns the stages to enqueue (a waiting one is sent when what it needs ends)."""
    if not parent.status.finished or parent.status == StageStatus.succeeded:
        raise ValueError(f"experiment {parent.id} is {parent.status.value}")
    firsts = []
    for member in members(s, parent.id):
        # a member reopened for another's retry (`_reopen_dependants`) is queued by now
        if member.status in (StageStatus.failed, StageStatus.cancelled):
            firsts.append(retry(s, member))
    parent.cancel_requested = False
    for st in parent.stages:
        if st.status.finished:
            _requeue(st)
    s.flush()
    _roll_up(parent)
    firsts.append(next((st for st in parent.stages if st.status == StageStatus.queued), None))
    # only once every member is queued again: one retried early may need one retried later
    return [st for st in firsts if st is not None and not waits_for_others(s, st)]


def new_stage(*, sent: bool) -> dict[str, Any]:
    """The lifecycle columns of a stage being inserted (`plan.insert_experiment`): queued, no
    attempts or progress yet, and `enqueued_at` now if its message is sent right after the
    insert commits (then `mark_unsent` if the broker refuses it)."""
    return {
        "status": StageStatus.queued,
        "attempts": 0,
        "epoch": 0,
        "epochs": 0,
        "step": 0,
        "steps": 0,
        "enqueued_at": now() if sent else None,
    }


def mark_unsent(s: Session, stage_id: int) -> bool:
    """Its message could not be sent after all: a queued stage goes back to no `enqueued_at`,
    which is what the reconciler sends again. Returns whether the stage was changed."""
    r = s.execute(
        update(Stage)
        .where(Stage.id == stage_id, Stage.status == StageStatus.queued)
        .values(enqueued_at=None)
        .execution_options(synchronize_session=False)
    )
    return bool(r.rowcount)


def mark_enqueued(s: Session, stage: Stage) -> None:
    """Its message was sent (the reconciler looks for queued stages without a recent one)."""
    if stage.status == StageStatus.queued:
        stage.enqueued_at = now()


def next_stage(s: Session, stage_id: int) -> Stage | None:
    """The queued stage that follows a succeeded one, if any; or the stage itself, queued again
    at its end to run again (`_rerun_if_requested`), once it waits for nothing (else
    `ready_after` sends it)."""
    stage = s.get(Stage, stage_id)
    if stage is not None and stage.status == StageStatus.queued:
        rerun = (stage.error or "").startswith(RERUN)
        return stage if rerun and not waits_for_others(s, stage) else None
    if stage is None or stage.status != StageStatus.succeeded:
        return None
    later = [x for x in stage.experiment.stages if x.position > stage.position]
    nxt = later[0] if later else None
    return nxt if nxt is not None and nxt.status == StageStatus.queued else None


def requeue_lost(s: Session, at: datetime, stale_after_s: float) -> list[Stage]:
    """The reconciler's pass. For each unfinished experiment, its first unfinished stage if
    - it is running with an expired lease, or held by a provably dead process of this host: it
      is reset to queued (it resumes from its last checkpoint);
    - it is queued and its message may be lost (never sent, or sent over `stale_after_s` ago).
    The caller sends the messages; duplicates are harmless (a stage is claimed once at a time).
    """
    out = []
    live = (StageStatus.queued, StageStatus.running)
    for exp in s.execute(select(Experiment).where(Experiment.status.in_(live))).scalars():
        stage = next((x for x in exp.stages if not x.status.finished), None)
        if stage is None:
            continue
        if stage.status == StageStatus.running:
            expires = aware(stage.lease_expires_at)
            dead = holder_is_dead(stage.worker_id)
            if expires is None or expires < at or dead:
                guard = _held(stage.id, stage.worker_id or "")
                if not dead:  # compare-and-set: a worker that renewed meanwhile keeps it
                    guard &= Stage.lease_expires_at.is_(None) | (Stage.lease_expires_at < at)
                r = s.execute(
                    update(Stage)
                    .where(guard)
                    .values(status=StageStatus.queued, enqueued_at=None, lease_expires_at=None)
                    .execution_options(synchronize_session="fetch")
                )
                if r.rowcount:
                    log.warning("stage %s lost its worker %s; re-queued", stage.id, stage.worker_id)
                    out.append(stage)
        elif waits_for_others(s, stage):
            continue  # sent by the worker that ends the last stage it needs
        else:
            enq = aware(stage.enqueued_at)
            if enq is None or (at - enq).total_seconds() > stale_after_s:
                out.append(stage)
    return out


# ------------------------------------------------------------------------------------ helpers


def _end(stage: Stage, status: StageStatus, error: str) -> None:
    stage.status = status
    stage.finished_at = now()
    stage.error = error
    stage.lease_expires_at = None


def _cancel_queued(exp: Experiment, reason: str) -> None:
    for x in exp.stages:
        if x.status == StageStatus.queued:
            _end(x, StageStatus.cancelled, reason)


def is_sweep(exp: Experiment) -> bool:
    """Whether `exp` is a sweep's parent (its members are experiments of their own)."""
    return bool(exp.sweep) and exp.sweep.get("role") == "sweep"


def members(s: Session, parent_id: str) -> list[Experiment]:
    """A sweep's member experiments (teachers, baselines, children), oldest first."""
    q = select(Experiment).where(Experiment.parent_id == parent_id)
    return list(s.scalars(q.order_by(Experiment.created_at, Experiment.id)))


def member_counts(s: Session, parent_id: str) -> dict[str, int]:
    """How many of a sweep's members are in each status."""
    q = (
        select(Experiment.status, func.count())
        .where(Experiment.parent_id == parent_id)
        .group_by(Experiment.status)
    )
    return {StageStatus(status).value: n for status, n in s.execute(q)}


def _roll_up(exp: Experiment) -> None:
    """The experiment's status from its stages' (a sweep's from its members' too); then its
    sweep's, if it is a member."""
    if is_sweep(exp):
        _roll_up_sweep(exp)
    else:
        _roll_up_stages(exp)
    _roll_up_parent(exp)


def _roll_up_parent(exp: Experiment) -> None:
    """Roll up the sweep `exp` is a member of, if any. The parent's row is locked first, so
    members ending at once roll it up one after another (the last sees every other's end);
    a deadlock with a concurrent cancel is detected by Postgres and the aborted transaction run
    again (the worker's by `backoff.retrying`, the gateway's by `planning.cancel_experiment`)."""
    s = object_session(exp)
    if exp.parent_id is not None and s is not None:
        parent = s.execute(
            select(Experiment)
            .where(Experiment.id == exp.parent_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).scalar_one_or_none()
        if parent is not None:
            _roll_up_sweep(parent)


def _roll_up_sweep(parent: Experiment) -> None:
    """A sweep's status: queued until a member starts, running until its own stage (the
    comparison) has ended, then succeeded (every member did), failed (no child did, or the
    comparison failed), cancelled, or `partial`."""
    s = object_session(parent)
    counts = member_counts(s, parent.id) if s is not None else {}
    own = [x.status for x in parent.stages]
    total = sum(counts.values())
    unfinished = counts.get("queued", 0) + counts.get("running", 0)
    if own and all(x.finished for x in own) and not unfinished:
        if any(x == StageStatus.failed for x in own):
            parent.status = StageStatus.failed
        elif any(x == StageStatus.cancelled for x in own):
            parent.status = StageStatus.cancelled
        elif counts.get("succeeded", 0) == total:
            parent.status = StageStatus.succeeded
        elif _children_succeeded(s, parent.id) == 0:
            parent.status = StageStatus.failed
        else:
            parent.status = StageStatus.partial
    elif counts.get("queued", 0) == total and all(x == StageStatus.queued for x in own):
        parent.status = StageStatus.queued
    else:
        parent.status = StageStatus.running


def _children_succeeded(s: Session | None, parent_id: str) -> int:
    if s is None:
        return 0
    q = select(Experiment.sweep).where(
        Experiment.parent_id == parent_id, Experiment.status == StageStatus.succeeded
    )
    return sum(1 for sweep in s.scalars(q) if (sweep or {}).get("role") == "child")


def _roll_up_stages(exp: Experiment) -> None:
    """A plain experiment's status from its stages'."""
    statuses = [x.status for x in exp.stages]
    if any(x == StageStatus.running for x in statuses):
        exp.status = StageStatus.running
    elif all(x == StageStatus.succeeded for x in statuses):
        exp.status = StageStatus.succeeded
    elif any(x == StageStatus.failed for x in statuses):
        exp.status = StageStatus.failed
    elif any(x == StageStatus.cancelled for x in statuses):
        exp.status = StageStatus.cancelled
    elif any(x == StageStatus.succeeded for x in statuses):
        exp.status = StageStatus.running  # under way: the next stage waits in its queue
    else:
        exp.status = StageStatus.queued
