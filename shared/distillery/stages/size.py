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
        from distillery.profiler import search_student_width

        search = search_student_width(ctx.spec)
        return StageOutput(result=search.model_dump(mode="json"))


SIZE = SizeStage()
