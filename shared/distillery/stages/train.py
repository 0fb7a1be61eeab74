"""The training stages: `teacher`, `student` (the baseline: the student alone) and `distill`.

Each runs `distillery.training.run_stage` on the GPU queue, resuming from the stage's last
checkpoint in storage, and stores the exported model, its metrics and its wandb run; its
`result` also holds its training time (``train_time_s``, `sweep_results.history_train_time`)
and ``epochs``. `distill` reads the teacher stage's model (or `teacher.model.checkpoint`).

A sweep's compute-matched baseline (`distillery.stages.sweep_plan`) is a `student` stage that
needs a child's `distill` and its baseline's `student`: it trains for the epochs that take as
long as the distillation did (`StudentStage.prepare`, `sweep_results.matched_epochs`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from distillery.spec import ExperimentSpec
from distillery.stages import keys
from distillery.stages.kinds import StageContext, StageInputs, StageKind, StageOutput
from distillery.storage import get_dir


class TrainStage(StageKind):
    """A stage that trains a model with `distillery.training.run_stage`."""

    def run(self, ctx: StageContext) -> StageOutput:
        from distillery.stages.sweep_results import history_train_time
        from distillery.training import run_stage

        if ctx.checkpoint_key:  # resume: bring the last checkpoint back if this machine lacks it
            local = ctx.workdir / self.name / "ckpt" / Path(ctx.checkpoint_key).name
            if not local.exists():
                ctx.retrying(
                    f"download {ctx.checkpoint_key}",
                    lambda: get_dir(ctx.storage, ctx.checkpoint_key, local),
                )
        result = run_stage(
            ctx.spec,
            self.name,  # type: ignore[arg-type]
            ctx.workdir,
            teacher_path=self.teacher_path(ctx),
            resume=True,
            hooks=ctx.hooks,
            tracker_group=ctx.tracker_group,
        )
        model_key = keys.model_key(ctx.experiment_id, self.name)
        ctx.retrying(
            f"upload {model_key}", lambda: ctx.storage.put_file(model_key, result.model_path)
        )
        payload = {
            "stage": self.name,
            "metrics": result.metrics,
            "history": result.history,
            "params": result.params,
        }
        data = json.dumps(payload, indent=2, default=str).encode()
        results_key = keys.stage_results_key(ctx.experiment_id, self.name)
        ctx.retrying(
            f"upload {results_key}",
            lambda: ctx.storage.put_bytes(results_key, data, "application/json"),
        )
        artifacts: list[tuple[str, str, int | None]] = [
            ("model", model_key, result.model_path.stat().st_size),
            ("results", results_key, len(data)),
        ]
        artifacts += ctx.store_wandb(result.wandb_run)
        return StageOutput(
            result={
                "metrics": result.metrics,
                "params": result.params,
                "train_time_s": history_train_time(result.history),
                "epochs": len(result.history),
            },
            model_key=model_key,
            wandb=result.wandb_run,
            artifacts=artifacts,
        )

    def num_nodes(self, spec: ExperimentSpec) -> int:
        from distillery.training.plan import plan_stage

        return plan_stage(spec, self.name).train.num_nodes

    def teacher_path(self, ctx: StageContext) -> Path | None:
        return None


class TeacherStage(TrainStage):
    name: ClassVar[str] = "teacher"
    table_label: ClassVar[str | None] = "teacher"

    def planned(self, spec: ExperimentSpec) -> bool:
        """A teacher given as a checkpoint is not trained again."""
        return "teacher" in spec.stages and spec.teacher.model.checkpoint is None


class StudentStage(TrainStage):
    name: ClassVar[str] = "student"
    reads: ClassVar[tuple[str, ...]] = ("size",)
    table_label: ClassVar[str | None] = "student (baseline)"

    def prepare(self, spec: ExperimentSpec, inputs: StageInputs) -> ExperimentSpec:
        """A compute-matched baseline (it needs a `distill` and a `student` stage of other
        experiments) trains ``round(epochs * t_distill / t_student)`` epochs (at least 1)
        from their recorded training times; any other baseline as planned."""
        from distillery.stages.sweep_results import matched_epochs

        spec = super().prepare(spec, inputs)
        parts = {p.name: p for p in inputs.parts}
        if not {"distill", "student"} <= parts.keys():
            return spec
        times = {}
        for name in ("distill", "student"):
            part = parts[name]
            times[name] = (part.result or {}).get("train_time_s")
            if part.status != "succeeded" or not times[name]:
                raise ValueError(
                    f"compute-matched baseline: stage {name} of experiment "
                    f"{part.experiment_id} recorded no training time ({part.status})"
                )
        epochs = matched_epochs(spec.student.train.epochs, times["distill"], times["student"])
        train = spec.student.train.model_copy(update={"epochs": epochs})
        return spec.model_copy(update={"student": spec.student.model_copy(update={"train": train})})


class DistillStage(TrainStage):
    name: ClassVar[str] = "distill"
    reads: ClassVar[tuple[str, ...]] = ("size", "teacher")
    table_label: ClassVar[str | None] = "student (distilled)"

    def teacher_path(self, ctx: StageContext) -> Path:
        """The teacher stage's model, else `teacher.model.checkpoint` (a file on this machine or
        a key in the artifacts store)."""
        key = ctx.inputs.models.get("teacher")
        if key is None:
            given = ctx.spec.teacher.model.checkpoint
            if given is None:
                raise RuntimeError("distillation needs a teacher: train one or give a checkpoint")
            if Path(given).is_file():
                return Path(given)
            key = given
        path = ctx.workdir / "teacher" / "model.pt"
        if not path.is_file():
            ctx.retrying(f"download {key}", lambda: ctx.storage.get_file(key, path))
        return path


TEACHER = TeacherStage()
STUDENT = StudentStage()
DISTILL = DistillStage()
