"""`StageRunner`: runs one stage to its end, for `distillery run` (SQLite, local folder) and the
workers (Postgres, S3) alike.

1. claim the stage (`lifecycle.claim`: a duplicate message, a finished stage or one a live
   worker holds does nothing; a dead holder's stage is taken over);
2. gather what it reads from earlier stages (`StageKind.provide`, typed) and run its kind;
3. while it runs: progress and a lease renewed, each epoch's metrics written once, checkpoints
   uploaded before the stage points at them, cancel and pause requests polled;
4. write the outcome: succeeded (results, artifacts), failed with a message naming the cause
   (`diverged at step N (loss=nan)`), cancelled, or released back to the queue (paused); a
   stage whose needed stages were retried while it ran is queued again instead, with nothing
   of this run recorded (`lifecycle.succeed`, `lifecycle.fail`);
5. return the id of the stage to enqueue next (the same stage after a pause, or queued again
   to re-run once it waits for nothing: `lifecycle.next_stage`).

Database and storage calls are retried with bounded backoff (`backoff.retrying`), so a short
outage of either is waited out; a database that stays away propagates (the message is
redelivered, or the reconciler sends it again).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from distillery.db.models import Artifact, Experiment, Stage, StageStatus
from distillery.spec import DatasetRef, ExperimentSpec
from distillery.stages import keys, lifecycle
from distillery.stages.backoff import DEFAULT_BUDGET_S, is_transient, retrying
from distillery.stages.kinds import StageContext, StageInputs, StageOutput
from distillery.stages.lifecycle import StageLost
from distillery.stages.plan import kind_of
from distillery.stages.results import build_results, results_markdown
from distillery.stages.uploads import CheckpointUploads
from distillery.storage import Storage, put_dir

if TYPE_CHECKING:
    from distillery.training.nodes import NodeLaunch, Ranks

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Seconds between step-progress writes and cancellation checks (epoch ends always write).
WRITE_INTERVAL_S = 2.0
_TRACKING_ORDER = ("disabled", "offline", "online")


class StageRunner:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        artifacts: Storage,
        work_dir: Path,
        worker_id: str,
        *,
        resolve_root: Callable[[DatasetRef], Path] | None = None,
        lease_seconds: int = 30,
        on_progress: Callable[[int, Any], None] | None = None,
        tracking_mode: str | None = None,
        should_pause: Callable[[], bool] | None = None,
        retry_budget_s: float = DEFAULT_BUDGET_S,
        check_spec: Callable[[str, ExperimentSpec], None] | None = None,
        launch_nodes: Callable[[NodeLaunch], Ranks] | None = None,
        shared_work_dir: Path | None = None,
        teacher_cache_dir: Path | None = None,
    ) -> None:
        """`tracking_mode` caps what a spec may ask of wandb (`online` > `offline` > `disabled`);
        `should_pause()` True (the worker got SIGTERM) checkpoints the stage at its next step and
        gives it back to the queue; `check_spec(experiment_id, spec)` (the platform's
        `distillery.access` rules) runs before the stage does, and what it raises fails it.
        `launch_nodes` starts a stage with `train.num_nodes > 1` on its machines (the GPU
        worker's Kubernetes Job; see `StageHooks`); such a stage works in `shared_work_dir` (a
        volume every machine mounts) instead of `work_dir`. `teacher_cache_dir` keeps the
        teacher caches of every experiment this runner runs (default
        ``<work_dir>/teacher_cache``: keyed by content, so they share them)."""
        self.sessions = session_factory
        self.artifacts = artifacts
        self.work_dir = Path(work_dir)
        self.worker_id = worker_id
        self.resolve_root = resolve_root
        self.lease = timedelta(seconds=lease_seconds)
        self.on_progress = on_progress
        self.tracking_mode = tracking_mode
        self.should_pause = should_pause
        self.retry_budget_s = retry_budget_s
        self.check_spec = check_spec
        self.launch_nodes = launch_nodes
        self.shared_work_dir = Path(shared_work_dir) if shared_work_dir is not None else None
        self.teacher_cache_dir = teacher_cache_dir or self.work_dir / "teacher_cache"

    # ------------------------------------------------------------------------------- retries

    def _db(self, what: str, fn: Callable[[Session], T]) -> T:
        """`fn(session)` in one transaction, retried while the database is unreachable."""

        def attempt() -> T:
            with self.sessions.begin() as s:
                return fn(s)

        return retrying(what, attempt, budget_s=self.retry_budget_s)

    def _storage(self, what: str, fn: Callable[[], T]) -> T:
        return retrying(what, fn, budget_s=self.retry_budget_s)

    # ------------------------------------------------------------------------------ lifecycle

    def run(self, stage_id: int) -> int | None:
        """Run one stage to its end; returns the id of the stage to enqueue next, if any."""
        w = self.worker_id
        try:
            claimed = self._db("claim", lambda s: lifecycle.claim(s, stage_id, w, self.lease))
            if claimed is None:
                return None
            kind = kind_of(claimed.name)
            inputs = StageInputs()
            for name, result, model_key in claimed.earlier:
                kind_of(name).provide(result, model_key, inputs)
            for part in claimed.needed:  # stages of other experiments (a sweep's teacher)
                if part.status == StageStatus.succeeded and part.name in kind.reads:
                    kind_of(part.name).provide(part.result, part.model_key, inputs)
            inputs.parts = list(claimed.needed)
            spec = kind.prepare(
                _cap_tracking(ExperimentSpec.model_validate(claimed.spec), self.tracking_mode),
                inputs,
            )
            if self.check_spec is not None:
                self.check_spec(claimed.experiment_id, spec)
            work_root = self._work_root(kind.num_nodes(spec))
        except Exception as exc:
            if is_transient(exc):
                raise
            log.exception("stage %s could not be started", stage_id)  # e.g. a stale stored spec
            return self._end(stage_id, _describe(exc), only_if_mine=True)

        from distillery.tracking import tracker_group
        from distillery.training import StageCancelled, StageDiverged, StagePaused

        workdir = work_root / claimed.experiment_id
        workdir.mkdir(parents=True, exist_ok=True)
        uploads = CheckpointUploads(
            self._checkpoint_uploader(stage_id, claimed.experiment_id, claimed.name),
            workdir / ".uploads",
        )
        ctx = StageContext(
            experiment_id=claimed.experiment_id,
            stage=claimed.name,
            spec=spec,
            inputs=inputs,
            workdir=workdir,
            storage=self.artifacts,
            checkpoint_key=claimed.checkpoint_key,
            hooks=self._hooks(stage_id, uploads),
            tracker_group=tracker_group(spec.name, claimed.experiment_id),
            retrying=self._storage,
        )
        try:
            try:  # every checkpoint written is stored and recorded before the stage ends
                output = kind.run(ctx)
            except BaseException:
                with contextlib.suppress(Exception):  # the stage's own error says why it ended
                    uploads.drain()
                raise
            else:
                uploads.drain()
            finally:
                uploads.close()
            self._succeed(stage_id, output, ctx)
        except StageLost as exc:
            log.warning("stage %s: %s; stopping without writing", stage_id, exc)
            return None
        except StagePaused as exc:
            log.info("stage %s paused (%s); giving it back to the queue", stage_id, exc)
            reason = f"preempted: {exc}"
            released = self._db("release", lambda s: lifecycle.release(s, stage_id, w, reason))
            return stage_id if released else None
        except StageCancelled:
            return self._end(stage_id, "cancelled by request", status=StageStatus.cancelled)
        except StageDiverged as exc:
            log.error("stage %s (%s) %s", stage_id, claimed.name, exc)
            return self._end(stage_id, str(exc))
        except Exception as exc:  # noqa: BLE001 - every failure is recorded on the stage
            if isinstance(exc, DBAPIError) and is_transient(exc):
                raise  # the database stayed away: the message is redelivered or re-sent
            log.exception("stage %s (%s) failed", stage_id, claimed.name)
            return self._end(stage_id, _describe(exc))
        nxt = self._db("next stage", lambda s: lifecycle.next_stage(s, stage_id))
        return nxt.id if nxt is not None else None

    def _work_root(self, num_nodes: int) -> Path:
        """Where a stage on `num_nodes` machines works: `shared_work_dir` above one machine."""
        if num_nodes > 1 and self.launch_nodes is not None:
            if self.shared_work_dir is None:
                raise ValueError(
                    f"train.num_nodes: {num_nodes} machines need a work folder they all mount "
                    "(the runner has no shared_work_dir)"
                )
            return self.shared_work_dir
        return self.work_dir

    def _end(
        self,
        stage_id: int,
        error: str,
        status: StageStatus = StageStatus.failed,
        only_if_mine: bool = False,
    ) -> int | None:
        """End the stage as failed (or cancelled); returns its id if it was queued again
        instead, to re-run now (`lifecycle.fail`, `lifecycle.next_stage`)."""

        def write(s: Session) -> int | None:
            lifecycle.fail(
                s, stage_id, self.worker_id, error, status=status, only_if_mine=only_if_mine
            )
            again = lifecycle.next_stage(s, stage_id)
            return again.id if again is not None and again.id == stage_id else None

        return self._db(f"mark stage {status.value}", write)

    def _succeed(self, stage_id: int, out: StageOutput, ctx: StageContext) -> None:
        """Record the success; the stage that completes the experiment also publishes the
        results table (report, results.json, the wandb comparison) before it commits, so an
        experiment is never `succeeded` without them. A sweep-level stage's result (the
        sweep's comparison, stored by the stage itself) is its sweep's results."""

        def write(s: Session) -> None:
            exp = lifecycle.succeed(
                s,
                stage_id,
                self.worker_id,
                result=out.result,
                model_key=out.model_key,
                wandb=out.wandb,
            )
            if _status(s, stage_id) != StageStatus.succeeded:
                return  # queued to run again (what it needed was retried): nothing recorded
            artifacts = [(ctx.stage, *a) for a in out.artifacts]
            if kind_of(ctx.stage).level == "sweep":  # the sweep's comparison is its results
                exp.results = lifecycle.finite_json(out.result)
            elif exp.status == StageStatus.succeeded:
                exp.results = lifecycle.finite_json(build_results(exp.stages))
                artifacts += [(None, *a) for a in self._publish(exp.results, ctx)]
            for stage, kind, key, size in artifacts:
                _add_artifact(s, exp, stage, kind, key, size)

        self._db("record success", write)

    def _publish(
        self, results: dict[str, Any], ctx: StageContext
    ) -> list[tuple[str, str, int | None]]:
        report = results_markdown(results).encode()
        table = json.dumps(results, indent=2).encode()
        rkey, jkey = keys.report_key(ctx.experiment_id), keys.results_key(ctx.experiment_id)
        self._storage(
            f"upload {rkey}", lambda: self.artifacts.put_bytes(rkey, report, "text/markdown")
        )
        self._storage(
            f"upload {jkey}", lambda: self.artifacts.put_bytes(jkey, table, "application/json")
        )
        return [
            ("report", rkey, len(report)),
            ("results", jkey, len(table)),
            *self._log_comparison(results, ctx),
        ]

    def _log_comparison(
        self, results: dict[str, Any], ctx: StageContext
    ) -> list[tuple[str, str, int | None]]:
        """Log the finished experiment's comparison table to wandb, in its group (once: only
        the stage that completes the experiment gets here). A failure is logged, not raised:
        the experiment has succeeded and tracking is a report."""
        from distillery.stages.profile_tracking import log_comparison

        try:
            run_dir = ctx.workdir / "comparison"
            run = log_comparison(results, ctx.spec, run_dir, group=ctx.tracker_group)
            return ctx.store_wandb(run, part="comparison")
        except Exception:  # noqa: BLE001
            log.exception("experiment %s: could not log the comparison to wandb", ctx.experiment_id)
            return []

    # ------------------------------------------------------------------------------- hooks

    def _hooks(self, stage_id: int, uploads: CheckpointUploads) -> Any:
        from distillery.training import StageHooks

        return StageHooks(
            on_progress=self._progress_writer(stage_id),
            on_checkpoint=lambda _global_step, directory: uploads.submit(directory),
            should_stop=self._cancel_checker(stage_id),
            should_pause=self.should_pause,
            resolve_root=self.resolve_root,
            launch_nodes=self.launch_nodes,
            teacher_cache_dir=self.teacher_cache_dir,
        )

    def _progress_writer(self, stage_id: int) -> Callable[[Any], None]:
        last = 0.0
        w = self.worker_id

        def write(p: Any) -> None:  # p: distillery.training.Progress
            nonlocal last
            t = time.monotonic()
            if self.on_progress is not None:
                self.on_progress(stage_id, p)
            where = (p.epoch, p.epochs, p.step, p.steps)
            if p.epoch_end:  # the epoch's metrics, once, waiting out an outage
                global_step = (p.epoch - 1) * p.steps + p.step

                def epoch_end(s: Session) -> None:
                    lifecycle.renew(s, stage_id, w, self.lease, where)
                    lifecycle.record_metric(s, stage_id, w, p.epoch, global_step, p.metrics)

                self._db("record epoch metrics", epoch_end)
                last = t
                return
            if t - last < WRITE_INTERVAL_S:
                return
            last = t
            try:
                with self.sessions.begin() as s:
                    lifecycle.renew(s, stage_id, w, self.lease, where)
            except StageLost:
                raise
            except Exception as exc:  # a step's progress can wait for the next write
                if not is_transient(exc):
                    raise
                log.warning("progress of stage %s not written: %s", stage_id, exc)

        return write

    def _checkpoint_uploader(
        self, stage_id: int, experiment_id: str, stage: str
    ) -> Callable[[Path], None]:
        """Store one checkpoint folder, then point the stage at it (on the uploader thread)."""

        def upload(directory: Path) -> None:
            key = keys.checkpoint_key(experiment_id, stage, directory.name)
            self._storage(f"upload {key}", lambda: put_dir(self.artifacts, key, directory))
            old = self._db(
                "record checkpoint",
                lambda s: lifecycle.set_checkpoint(s, stage_id, self.worker_id, key),
            )
            if old and old != key:  # keep only the newest checkpoint in storage
                try:
                    self._storage(f"delete {old}", lambda: self.artifacts.delete_prefix(old + "/"))
                except Exception:  # noqa: BLE001 - an orphaned old checkpoint costs only space
                    log.warning("could not delete old checkpoint %s", old, exc_info=True)

        return upload

    def _cancel_checker(self, stage_id: int) -> Callable[[], bool]:
        last, cancelled = 0.0, False

        def should_stop() -> bool:
            nonlocal last, cancelled
            t = time.monotonic()
            if not cancelled and t - last >= WRITE_INTERVAL_S:
                last = t
                try:
                    with self.sessions() as s:
                        cancelled = lifecycle.cancel_requested(s, stage_id)
                except Exception as exc:  # asked again at the next interval
                    if not is_transient(exc):
                        raise
            return cancelled

        return should_stop


# ------------------------------------------------------------------------------------ helpers


def _status(s: Session, stage_id: int) -> StageStatus | None:
    return s.scalar(select(Stage.status).where(Stage.id == stage_id))


def _cap_tracking(spec: ExperimentSpec, cap: str | None) -> ExperimentSpec:
    if cap is None or _TRACKING_ORDER.index(spec.tracking.mode) <= _TRACKING_ORDER.index(cap):
        return spec
    tracking = spec.tracking.model_copy(update={"mode": cap})
    return spec.model_copy(update={"tracking": tracking})


def _add_artifact(
    s: Session, exp: Experiment, stage: str | None, kind: str, key: str, size: int | None
) -> None:
    existing = s.execute(
        select(Artifact).where(Artifact.experiment_id == exp.id, Artifact.key == key)
    ).scalar_one_or_none()
    if existing is None:
        s.add(Artifact(experiment_id=exp.id, stage=stage, kind=kind, key=key, size=size))


def _describe(exc: BaseException) -> str:
    """What a user sees: the message (naming the file or field), then where it was raised."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {tb[-1].filename}:{tb[-1].lineno})" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"
