"""A stage's life, shared by `distillery run` (SQLite, local folder) and workers (Postgres, S3).

`queued -> running -> succeeded | failed | cancelled`. Running, a stage holds a lease (worker id,
heartbeat, expiry) that its progress renews. The runner:

1. claims the stage (a redelivered message for a finished stage, or one another worker holds a live
   lease on, does nothing);
2. fetches what it needs from storage: its own last checkpoint (resume), the teacher model;
3. calls one engine function (train, distil, size or profile the student);
4. writes progress, per-epoch metrics, artifacts and the final status back;
5. returns the next stage to enqueue.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from distillery.db.models import Artifact, Experiment, Metric, Stage, StageStatus
from distillery.results import build_results, results_markdown
from distillery.spec import DatasetRef, ExperimentSpec
from distillery.storage import Storage, get_dir, put_dir

log = logging.getLogger(__name__)

#: Seconds between progress/heartbeat writes and cancellation checks (epoch ends always write).
WRITE_INTERVAL_S = 2.0


def now() -> datetime:
    return datetime.now(UTC)


def _aware(ts: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; everything stored is UTC."""
    return ts.replace(tzinfo=UTC) if ts is not None and ts.tzinfo is None else ts


def stage_prefix(stage: Stage) -> str:
    return f"artifacts/{stage.experiment_id}/{stage.name}"


class StageRunner:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        artifacts: Storage,
        work_dir: Path,
        worker_id: str,
        *,
        resolve_root: Callable[[DatasetRef], Path] | None = None,
        lease_seconds: int = 600,
        on_progress: Callable[[int, Any], None] | None = None,
        tracking_mode: str | None = None,
    ) -> None:
        """`tracking_mode` caps what a spec may ask of wandb (`online` > `offline` > `disabled`):
        a platform without internet sets `offline`, and online specs then log offline."""
        self.sessions = session_factory
        self.artifacts = artifacts
        self.work_dir = Path(work_dir)
        self.worker_id = worker_id
        self.resolve_root = resolve_root
        self.lease = timedelta(seconds=lease_seconds)
        self.on_progress = on_progress
        self.tracking_mode = tracking_mode

    # ------------------------------------------------------------------------------- lifecycle

    def run(self, stage_id: int) -> int | None:
        """Run one stage to its end; returns the id of the next stage to enqueue, if this call
        ran the stage and it succeeded. A database outage propagates (the message is redelivered
        or the reconciler sends it again); every other failure is recorded on the stage."""
        try:
            claimed = self._claim(stage_id)
        except DBAPIError:
            raise
        except Exception as exc:  # e.g. a stored spec that no longer validates
            log.exception("stage %s could not be started", stage_id)
            self._finish(stage_id, StageStatus.failed, error=_describe(exc), only_if_mine=True)
            return None
        if claimed is None:
            return None
        stage_name, experiment_id, spec = claimed
        workdir = self.work_dir / experiment_id
        try:
            result = self._execute(stage_id, stage_name, spec, workdir)
            self._succeed(stage_id, result)
        except StageLost as exc:
            log.warning("stage %s: %s; stopping without writing", stage_id, exc)
            return None
        except DBAPIError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is recorded on the stage
            from distillery.training import StageCancelled

            if isinstance(exc, StageCancelled):
                self._finish(stage_id, StageStatus.cancelled, error="cancelled by request")
                return None
            log.exception("stage %s (%s) failed", stage_id, stage_name)
            self._finish(stage_id, StageStatus.failed, error=_describe(exc))
            return None
        return self._next_stage_id(stage_id)

    def _owned(self, stage: Stage | None) -> Stage:
        """The stage, if this runner still holds it; else `StageLost` (the reconciler gave it
        to another worker after this one's lease expired)."""
        if (
            stage is None
            or stage.status != StageStatus.running
            or (stage.worker_id != self.worker_id)
        ):
            raise StageLost(f"this worker ({self.worker_id}) no longer holds the stage")
        return stage

    def _claim(self, stage_id: int) -> tuple[str, str, ExperimentSpec] | None:
        with self.sessions.begin() as s:
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
            lease = _aware(stage.lease_expires_at)
            held = stage.status == StageStatus.running and lease is not None and lease > t
            if held and stage.worker_id != self.worker_id:
                log.info("stage %s is held by %s; skipping", stage_id, stage.worker_id)
                return None
            if exp.cancel_requested:
                if stage.status == StageStatus.running:  # its worker died after the cancel
                    stage.status, stage.finished_at = StageStatus.cancelled, now()
                _cancel_rest(exp, "cancelled before it started")
                return None
            earlier = [x for x in exp.stages if x.position < stage.position]
            if any(x.status != StageStatus.succeeded for x in earlier):
                log.info("stage %s waits for earlier stages", stage_id)
                return None
            stage.status = StageStatus.running
            stage.worker_id = self.worker_id
            stage.started_at = stage.started_at or t
            stage.heartbeat_at = t
            stage.lease_expires_at = t + self.lease
            stage.attempts += 1
            stage.error = None
            exp.status = StageStatus.running
            spec = _cap_tracking(ExperimentSpec.model_validate(exp.spec), self.tracking_mode)
            width = _resolved_width(exp)
            if width is not None:
                spec = spec.with_student_width(width)
            return stage.name, exp.id, spec

    def _next_stage_id(self, stage_id: int) -> int | None:
        with self.sessions() as s:
            stage = s.get(Stage, stage_id)
            if stage is None or stage.status != StageStatus.succeeded:
                return None
            later = [x for x in stage.experiment.stages if x.position > stage.position]
            nxt = later[0] if later else None
            return nxt.id if nxt is not None and nxt.status == StageStatus.queued else None

    def _succeed(self, stage_id: int, result: dict[str, Any]) -> None:
        completed = None
        with self.sessions.begin() as s:
            stage = self._owned(s.get(Stage, stage_id, with_for_update=True))
            stage.status = StageStatus.succeeded
            stage.finished_at = now()
            stage.result = result.get("result")
            stage.wandb = result.get("wandb")
            stage.model_key = result.get("model_key")
            for kind, key, size in result.get("artifacts", []):
                _add_artifact(s, stage, kind, key, size)
            exp = stage.experiment
            if all(x.status == StageStatus.succeeded for x in exp.stages):
                exp.status = StageStatus.succeeded
                exp.results = build_results(exp.stages)
                report = results_markdown(exp.results).encode()
                key = f"artifacts/{exp.id}/report.md"
                self.artifacts.put_bytes(key, report, "text/markdown")
                self.artifacts.put_bytes(
                    f"artifacts/{exp.id}/results.json",
                    json.dumps(exp.results, indent=2).encode(),
                    "application/json",
                )
                _add_artifact(s, None, "report", key, len(report), exp=exp)
                _add_artifact(s, None, "results", f"artifacts/{exp.id}/results.json", None, exp=exp)
                completed = (exp.id, exp.spec, exp.results)
        if completed is not None:
            self._log_comparison(*completed)

    def _log_comparison(self, experiment_id: str, spec_json: Any, results: dict[str, Any]) -> None:
        """Log the finished experiment's comparison table to wandb, in its group (once: only
        the call that completes the experiment gets here). A failure is logged, not raised."""
        from distillery.stages.profile_tracking import log_comparison
        from distillery.tracking import tracker_group

        spec = _cap_tracking(ExperimentSpec.model_validate(spec_json), self.tracking_mode)
        try:
            run = log_comparison(
                results,
                spec,
                self.work_dir / experiment_id / "comparison",
                group=tracker_group(spec.name, experiment_id),
            )
            stored = self._store_wandb(f"artifacts/{experiment_id}/comparison", run)
        except Exception:  # noqa: BLE001 - the experiment has succeeded; tracking is a report
            log.exception("experiment %s: could not log the comparison to wandb", experiment_id)
            return
        with self.sessions.begin() as s:
            exp = s.get(Experiment, experiment_id)
            for kind, key, size in stored:
                _add_artifact(s, None, kind, key, size, exp=exp)

    def _finish(
        self, stage_id: int, status: StageStatus, error: str, only_if_mine: bool = False
    ) -> None:
        """End the stage as failed or cancelled; later stages will not run. With `only_if_mine`,
        a stage another worker holds is left alone."""
        with self.sessions.begin() as s:
            stage = s.get(Stage, stage_id, with_for_update=True)
            if stage is None or stage.status.finished:
                return
            held_elsewhere = stage.status == StageStatus.running and (
                stage.worker_id != self.worker_id
            )
            if only_if_mine and held_elsewhere:
                return
            stage.status = status
            stage.finished_at = now()
            stage.error = error
            stage.lease_expires_at = None
            _cancel_rest(stage.experiment, f"not run: stage {stage.name} {status.value}")
            stage.experiment.status = status

    # ------------------------------------------------------------------------------ execution

    def _execute(
        self, stage_id: int, name: str, spec: ExperimentSpec, workdir: Path
    ) -> dict[str, Any]:
        workdir.mkdir(parents=True, exist_ok=True)
        if name == "size":
            return self._size(stage_id, spec, workdir)
        if name == "profile":
            return self._profile(stage_id, spec, workdir)
        return self._train(stage_id, name, spec, workdir)

    def _train(
        self, stage_id: int, name: str, spec: ExperimentSpec, workdir: Path
    ) -> dict[str, Any]:
        from distillery.tracking import tracker_group
        from distillery.training import run_stage

        with self.sessions() as s:
            stage = s.get(Stage, stage_id)
            experiment_id, ckpt_key = stage.experiment_id, stage.checkpoint_key
            teacher_key = _model_key(stage.experiment, "teacher")
        prefix = f"artifacts/{experiment_id}/{name}"
        if ckpt_key:  # resume: bring the last checkpoint back if this machine lacks it
            local = workdir / name / "ckpt" / Path(ckpt_key).name
            if not local.exists():
                get_dir(self.artifacts, ckpt_key, local)
        teacher_path = None
        if name == "distill":
            teacher_path = self._teacher_path(spec, teacher_key, workdir)

        def on_checkpoint(epoch: int, directory: Path) -> None:
            key = f"{prefix}/ckpt/{directory.name}"
            put_dir(self.artifacts, key, directory)
            with self.sessions.begin() as s:
                st = self._owned(s.get(Stage, stage_id))
                old = st.checkpoint_key
                st.checkpoint_key = key
            if old and old != key:  # keep only the newest checkpoint in storage
                self.artifacts.delete_prefix(old + "/")

        result = run_stage(
            spec,
            name,  # type: ignore[arg-type]
            workdir,
            teacher_path=teacher_path,
            resume=True,
            on_progress=self._progress_writer(stage_id),
            should_stop=self._cancel_checker(stage_id),
            on_checkpoint=on_checkpoint,
            resolve_root=self.resolve_root,
            tracker_group=tracker_group(spec.name, experiment_id),
        )
        model_key = f"{prefix}/model.pt"
        self.artifacts.put_file(model_key, result.model_path)
        payload = {
            "stage": name,
            "metrics": result.metrics,
            "history": result.history,
            "params": result.params,
        }
        data = json.dumps(payload, indent=2, default=str).encode()
        self.artifacts.put_bytes(f"{prefix}/results.json", data, "application/json")
        artifacts = [
            ("model", model_key, result.model_path.stat().st_size),
            ("results", f"{prefix}/results.json", len(data)),
        ]
        artifacts += self._store_wandb(prefix, result.wandb_run)
        return {
            "result": {"metrics": result.metrics, "params": result.params},
            "wandb": result.wandb_run,
            "model_key": model_key,
            "artifacts": artifacts,
        }

    def _teacher_path(self, spec: ExperimentSpec, teacher_key: str | None, workdir: Path) -> Path:
        if teacher_key is None:
            given = spec.teacher.model.checkpoint
            if given is None:
                raise RuntimeError("distillation needs a teacher: train one or give a checkpoint")
            if Path(given).is_file():
                return Path(given)
            teacher_key = given  # a key in the artifacts store
        path = workdir / "teacher" / "model.pt"
        if not path.is_file():
            self.artifacts.get_file(teacher_key, path)
        return path

    def _store_wandb(
        self, prefix: str, run: dict[str, Any] | None
    ) -> list[tuple[str, str, int | None]]:
        """Upload a wandb run folder to `<prefix>/wandb/<run folder>` (an offline run is synced
        from there later); the artifact rows to add."""
        if not run or not run.get("dir") or not Path(run["dir"]).is_dir():
            return []
        run_dir = Path(run["dir"])
        key = f"{prefix}/wandb/{run_dir.name}"
        put_dir(self.artifacts, key, run_dir)
        return [("wandb", key, None)]

    def _size(self, stage_id: int, spec: ExperimentSpec, workdir: Path) -> dict[str, Any]:
        from distillery.profiler import BudgetNotMetError, search_student_width
        from distillery.stages.profile_tracking import log_size_run
        from distillery.tracking import tracker_group

        with self.sessions() as s:
            experiment_id = s.get(Stage, stage_id).experiment_id
        group, prefix = tracker_group(spec.name, experiment_id), f"artifacts/{experiment_id}/size"
        try:
            search = search_student_width(spec)
        except BudgetNotMetError as e:  # the failed search is logged too
            run = log_size_run(e.search, spec, workdir / "size", group=group, failed=True)
            self._store_wandb(prefix, run)
            raise
        run = log_size_run(search, spec, workdir / "size", group=group)
        return {
            "result": search.model_dump(mode="json"),
            "wandb": run,
            "artifacts": self._store_wandb(prefix, run),
        }

    def _profile(self, stage_id: int, spec: ExperimentSpec, workdir: Path) -> dict[str, Any]:
        from distillery.models.checkpoint import load_model_checkpoint
        from distillery.profiler import profile_model
        from distillery.stages.profile_tracking import log_profile_run
        from distillery.tracking import tracker_group

        with self.sessions() as s:
            exp = s.get(Stage, stage_id).experiment
            keys = {name: _model_key(exp, name) for name in ("teacher", "student", "distill")}
            experiment_id = exp.id
        reports: dict[str, Any] = {}  # role -> ProfileReport
        # The distilled student and the baseline share an architecture: profile one of them.
        for role, names in (("teacher", ["teacher"]), ("student", ["distill", "student"])):
            key = next((keys[n] for n in names if keys[n]), None)
            if key is None and role == "teacher" and spec.teacher.model.checkpoint:
                key = spec.teacher.model.checkpoint
            if key is None:
                continue
            path = Path(key) if Path(key).is_file() else workdir / "profile" / f"{role}.pt"
            if not path.is_file():
                self.artifacts.get_file(key, path)
            model, _ = load_model_checkpoint(path)
            reports[role] = profile_model(model, spec.profiling)
        prefix = f"artifacts/{experiment_id}/profile"
        group = tracker_group(spec.name, experiment_id)
        run = (
            log_profile_run(
                reports,
                spec.profiling,
                spec.tracking,
                workdir / "profile",
                name=f"{spec.name}-profile",
                group=group,
                spec=spec,
            )
            if reports
            else None
        )
        result = {role: r.model_dump(mode="json") for role, r in reports.items()}
        data = json.dumps(result, indent=2).encode()
        self.artifacts.put_bytes(f"{prefix}/profile.json", data, "application/json")
        artifacts = [("profile", f"{prefix}/profile.json", len(data))]
        return {
            "result": result,
            "wandb": run,
            "artifacts": artifacts + self._store_wandb(prefix, run),
        }

    # ------------------------------------------------------------------------------- callbacks

    def _progress_writer(self, stage_id: int) -> Callable[[Any], None]:
        last = 0.0

        def write(p: Any) -> None:  # p: distillery.training.Progress
            nonlocal last
            epoch_end = "miou" in p.metrics
            t = time.monotonic()
            if self.on_progress is not None:
                self.on_progress(stage_id, p)
            if not epoch_end and t - last < WRITE_INTERVAL_S:
                return
            last = t
            with self.sessions.begin() as s:
                st = self._owned(s.get(Stage, stage_id))
                st.epoch, st.epochs, st.step, st.steps = p.epoch, p.epochs, p.step, p.steps
                st.heartbeat_at = now()
                st.lease_expires_at = st.heartbeat_at + self.lease
                if epoch_end:
                    s.add(
                        Metric(
                            stage_id=stage_id,
                            epoch=p.epoch,
                            step=p.step,
                            values=_jsonable(p.metrics),
                        )
                    )

        return write

    def _cancel_checker(self, stage_id: int) -> Callable[[], bool]:
        last, cancelled = 0.0, False

        def should_stop() -> bool:
            nonlocal last, cancelled
            t = time.monotonic()
            if not cancelled and t - last >= WRITE_INTERVAL_S:
                last = t
                with self.sessions() as s:
                    cancelled = bool(s.get(Stage, stage_id).experiment.cancel_requested)
            return cancelled

        return should_stop


# ------------------------------------------------------------------------------------ helpers


class StageLost(RuntimeError):
    """This worker's lease expired and the stage was handed to another worker."""


_TRACKING_ORDER = ("disabled", "offline", "online")


def _cap_tracking(spec: ExperimentSpec, cap: str | None) -> ExperimentSpec:
    if cap is None or _TRACKING_ORDER.index(spec.tracking.mode) <= _TRACKING_ORDER.index(cap):
        return spec
    tracking = spec.tracking.model_copy(update={"mode": cap})
    return spec.model_copy(update={"tracking": tracking})


def _resolved_width(exp: Experiment) -> int | None:
    size = next((x for x in exp.stages if x.name == "size"), None)
    if size is None or size.status != StageStatus.succeeded or not size.result:
        return None
    return int(size.result["width"])


def _model_key(exp: Experiment, name: str) -> str | None:
    stage = next((x for x in exp.stages if x.name == name), None)
    return stage.model_key if stage is not None else None


def _cancel_rest(exp: Experiment, reason: str) -> None:
    for x in exp.stages:
        if x.status == StageStatus.queued:
            x.status = StageStatus.cancelled
            x.error = reason
            x.finished_at = now()
    if exp.cancel_requested and not any(x.status == StageStatus.running for x in exp.stages):
        exp.status = StageStatus.cancelled


def _add_artifact(
    s: Session,
    stage: Stage | None,
    kind: str,
    key: str,
    size: int | None,
    exp: Experiment | None = None,
) -> None:
    exp = exp if exp is not None else stage.experiment
    existing = s.execute(
        select(Artifact).where(Artifact.experiment_id == exp.id, Artifact.key == key)
    ).scalar_one_or_none()
    if existing is None:
        s.add(
            Artifact(
                experiment_id=exp.id,
                stage=stage.name if stage else None,
                kind=kind,
                key=key,
                size=size,
            )
        )


def _describe(exc: BaseException) -> str:
    """What a user sees: the message (naming the file or field), then where it was raised."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {tb[-1].filename}:{tb[-1].lineno})" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(values, default=float))


def stages_to_enqueue(session: Session, at: datetime, stale_after_s: float) -> list[Stage]:
    """The reconciler's query. For each unfinished experiment, its first unfinished stage if
    - it is queued and its message may be lost (never enqueued, or enqueued over
      `stale_after_s` ago), or
    - it is running with an expired lease (its worker died): it is reset to queued.
    The caller commits, sets `enqueued_at` and sends the messages; duplicates are harmless
    because a stage is claimed at most once at a time."""
    out = []
    live = (StageStatus.queued, StageStatus.running)
    exps = session.execute(select(Experiment).where(Experiment.status.in_(live))).scalars()
    for exp in exps:
        stage = next((x for x in exp.stages if not x.status.finished), None)
        if stage is None:
            continue
        if stage.status == StageStatus.running:
            lease = _aware(stage.lease_expires_at)
            if lease is None or lease < at:
                log.warning("stage %s lost its worker %s; re-queueing", stage.id, stage.worker_id)
                stage.status = StageStatus.queued
                stage.enqueued_at = None
                out.append(stage)
        else:
            enq = _aware(stage.enqueued_at)
            if enq is None or (at - enq).total_seconds() > stale_after_s:
                out.append(stage)
    return out
