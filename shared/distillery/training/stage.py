"""`run_stage`: the one entry point the platform and `distillery run` call to train a stage.

It runs the stage in this process, or, when ``train.num_processes > 1`` (and this is not
already one of several processes), under ``accelerate launch`` in a subprocess group (see
`launcher`), or, when ``train.num_nodes > 1``, on machines that `StageHooks.launch_nodes`
starts (the platform's worker; refused without it). Either way the caller gets the same
callbacks and the same `StageResult`.

Layout of ``workdir/<stage>/``: ``ckpt/step-<n>/`` (accelerate state after n optimizer steps,
newest two kept), ``model.pt`` (the exported model), ``result.json`` (present once the stage
finished: a re-run just returns it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Literal

from distillery.spec import ExperimentSpec
from distillery.training.hooks import NO_HOOKS, StageHooks
from distillery.training.plan import check_precision, check_processes, plan_stage, visible_gpus
from distillery.training.result import RESULT_FILE, StageResult

TrainStage = Literal["teacher", "student", "distill"]


def run_stage(
    spec: ExperimentSpec,
    stage: TrainStage,
    workdir: Path,
    *,
    teacher_path: Path | None = None,
    resume: bool = True,
    hooks: StageHooks = NO_HOOKS,
    tracker_group: str | None = None,
) -> StageResult:
    """Train `stage` of `spec` in ``workdir/<stage>/`` and return its result.

    - `teacher_path`: the teacher's exported model for ``distill`` (else
      ``spec.teacher.model.checkpoint``).
    - `resume`: continue from the newest checkpoint (and return a finished stage's result as
      is); False starts over, deleting what the stage wrote before.
    - `hooks`: progress, checkpoint, stop/pause requests and dataset resolution (`StageHooks`).
    - `tracker_group`: the wandb group (default: the spec's name).
    """
    plan = plan_stage(spec, stage)  # validates the stage and its settings early
    check_precision(plan.train)
    if plan.train.num_nodes > 1 and hooks.launch_nodes is None:
        raise ValueError(
            f"{stage}.train.num_nodes: {plan.train.num_nodes} machines run as a Kubernetes Job "
            "started by the platform's GPU worker; without a cluster (`distillery run`) use "
            "num_processes on one machine"
        )
    if plan.train.num_nodes == 1:  # on several machines, each checks its own GPUs
        check_processes(plan.train.num_processes, visible_gpus())
    workdir = Path(workdir).resolve()
    stage_dir = workdir / stage
    result_file = stage_dir / RESULT_FILE
    if resume and result_file.is_file():
        return StageResult.load(result_file)
    if not resume and stage_dir.exists():
        shutil.rmtree(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)

    if hooks.launch_nodes is not None and plan.train.num_nodes > 1:
        from distillery.training.launcher import launch_nodes_stage

        return launch_nodes_stage(
            spec,
            stage,
            workdir,
            hooks.launch_nodes,
            num_nodes=plan.train.num_nodes,
            processes_per_node=plan.train.num_processes,
            mixed_precision=plan.train.mixed_precision,
            teacher_path=teacher_path,
            hooks=hooks,
            tracker_group=tracker_group,
        )
    if plan.train.num_processes > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        from distillery.training.launcher import launch_stage

        return launch_stage(
            spec,
            stage,
            workdir,
            num_processes=plan.train.num_processes,
            mixed_precision=plan.train.mixed_precision,
            teacher_path=teacher_path,
            hooks=hooks,
            tracker_group=tracker_group,
        )

    from distillery.training.trainer import train_stage

    return train_stage(
        spec,
        stage,
        workdir,
        teacher_path=teacher_path,
        resume=resume,
        hooks=hooks,
        tracker_group=tracker_group,
    ).result
