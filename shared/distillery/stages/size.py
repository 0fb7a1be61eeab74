"""`size`: pick the student's width for the latency budget (`student.model.width: auto`).

Planned first when the student's width is `auto` and a student is used; runs on the profiler
queue. Later stages read the chosen width as `StageInputs.student_width`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from distillery.spec import ExperimentSpec
from distillery.stages.kinds import Queue, StageContext, StageInputs, StageKind, StageOutput


class SizeStage(StageKind):
    name: ClassVar[str] = "size"
    queue: ClassVar[Queue] = "profiler"

    def planned(self, spec: ExperimentSpec) -> bool:
        uses_student = any(s in spec.stages for s in ("student", "distill", "profile"))
        return spec.student.model.width == "auto" and uses_student

    def provide(
        self, result: dict[str, Any] | None, model_key: str | None, inputs: StageInputs
    ) -> None:
        if result and result.get("width") is not None:
            inputs.student_width = int(result["width"])

    def run(self, ctx: StageContext) -> StageOutput:
        from distillery.profiler import BudgetNotMetError, search_student_width
        from distillery.stages.profile_tracking import log_size_run

        run_dir, group = ctx.workdir / "size", ctx.tracker_group
        try:
            search = search_student_width(ctx.spec)
        except BudgetNotMetError as e:  # the failed search is logged too
            ctx.store_wandb(log_size_run(e.search, ctx.spec, run_dir, group=group, failed=True))
            raise
        run = log_size_run(search, ctx.spec, run_dir, group=group)
        return StageOutput(
            result=search.model_dump(mode="json"), wandb=run, artifacts=ctx.store_wandb(run)
        )


SIZE = SizeStage()
