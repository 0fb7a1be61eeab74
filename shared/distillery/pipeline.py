"""`distillery run`: a whole experiment on one machine, no servers.

The same `StageRunner` as the workers, with SQLite (`<run_dir>/distillery.db`) in place of Postgres
and the run folder in place of MinIO. Running the same spec again resumes where it stopped: a
failed or cancelled experiment is retried (`lifecycle.retry`), its stages resuming from their
last checkpoints (`fresh=True` starts a new experiment).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from distillery.db import Experiment, StageStatus, make_engine, make_session_factory, migrate
from distillery.spec import ExperimentSpec
from distillery.stages import lifecycle
from distillery.stages.plan import insert_experiment
from distillery.stages.results import results_markdown
from distillery.stages.runner import StageRunner
from distillery.storage import LocalStorage


class ExperimentFailed(RuntimeError):
    """A stage failed or was cancelled; the message carries the stage's error."""


def run_local(
    spec: ExperimentSpec,
    run_dir: Path,
    *,
    fresh: bool = False,
    on_progress: Callable[[str, Any], None] | None = None,
    on_stage: Callable[[str, str], None] | None = None,
    teacher_cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Run every planned stage of `spec` in this process; returns the results table.

    `on_stage(name, status)` is called as stages start and end; `on_progress(stage, Progress)`
    with training progress. Writes `results.json` and `results.md` into `run_dir`. Teacher
    caches (`distillation.teacher_cache`) go to `teacher_cache_dir` (default
    ``<run_dir>/teacher_cache``).
    """
    from distillery.data import ensure_synthetic

    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    ensure_synthetic(spec.data)
    engine = make_engine(f"sqlite:///{run_dir / 'distillery.db'}")
    migrate(engine)
    sessions = make_session_factory(engine)
    spec_json = spec.model_dump(mode="json")

    with sessions.begin() as s:
        exp = (
            s.execute(
                select(Experiment)
                .where(Experiment.name == spec.name)
                .order_by(Experiment.created_at.desc())
            )
            .scalars()
            .first()
        )
        if exp is not None and (fresh or exp.spec != spec_json):
            exp = None  # a new experiment; the old one stays in the database
        if exp is not None and exp.status in (StageStatus.failed, StageStatus.cancelled):
            lifecycle.retry(s, exp)
        if exp is None:
            inserted = insert_experiment(s, spec, send_first=False)  # nothing is sent here
            experiment_id = inserted.experiment["id"]
            stages = [(st["id"], st["name"]) for st in inserted.stages]
        else:
            experiment_id = exp.id
            stages = [(st.id, st.name) for st in exp.stages]

    names = dict(stages)
    runner = StageRunner(
        sessions,
        LocalStorage(run_dir),
        run_dir / "work",
        worker_id="local",
        teacher_cache_dir=teacher_cache_dir or run_dir / "teacher_cache",
        on_progress=(lambda sid, p: on_progress(names[sid], p)) if on_progress else None,
    )
    for stage_id, name in stages:
        with sessions() as s:
            exp = s.get(Experiment, experiment_id)
            stage = next(st for st in exp.stages if st.id == stage_id)
            status = stage.status
        if status == StageStatus.succeeded:
            if on_stage:
                on_stage(name, "done")
            continue
        if on_stage:
            on_stage(name, "running")
        runner.run(stage_id)
        with sessions() as s:
            stage = next(st for st in s.get(Experiment, experiment_id).stages if st.id == stage_id)
            if stage.status != StageStatus.succeeded:
                raise ExperimentFailed(f"stage {name} {stage.status.value}: {stage.error}")
        if on_stage:
            on_stage(name, "done")

    with sessions() as s:
        results = dict(s.get(Experiment, experiment_id).results or {})
    results["experiment_id"] = experiment_id
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    (run_dir / "results.md").write_text(results_markdown(results))
    engine.dispose()
    return results
