"""`profile`: latency, FLOPs and memory of the teacher and the (distilled) student.

Runs on the profiler queue after the training stages; reads their exported models (or the
teacher given as `teacher.model.checkpoint`) and writes ``profile/profile.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from distillery.stages import keys
from distillery.stages.kinds import Queue, StageContext, StageKind, StageOutput


class ProfileStage(StageKind):
    name: ClassVar[str] = "profile"
    queue: ClassVar[Queue] = "profiler"
    reads: ClassVar[tuple[str, ...]] = ("size", "teacher", "student", "distill")

    def run(self, ctx: StageContext) -> StageOutput:
        from distillery.models.checkpoint import load_model_checkpoint
        from distillery.profiler import profile_model
        from distillery.stages.profile_tracking import log_profile_run

        models = ctx.inputs.models
        reports: dict[str, Any] = {}  # role -> ProfileReport
        # The distilled student and the baseline share an architecture: profile one of them.
        for role, names in (("teacher", ["teacher"]), ("student", ["distill", "student"])):
            key = next((models[n] for n in names if n in models), None)
            if key is None and role == "teacher":
                key = ctx.spec.teacher.model.checkpoint
            if key is None:
                continue
            path = Path(key) if Path(key).is_file() else ctx.workdir / "profile" / f"{role}.pt"
            if not path.is_file():
                ctx.retrying(f"download {key}", lambda k=key, p=path: ctx.storage.get_file(k, p))
            model, _ = load_model_checkpoint(path)
            reports[role] = profile_model(model, ctx.spec.profiling)
        run = None
        if reports:  # logged after measuring: wandb's threads never run during timing
            run = log_profile_run(
                reports,
                ctx.spec.profiling,
                ctx.spec.tracking,
                ctx.workdir / "profile",
                name=f"{ctx.spec.name}-profile",
                group=ctx.tracker_group,
                spec=ctx.spec,
            )
        result = {role: r.model_dump(mode="json") for role, r in reports.items()}
        key = keys.profile_key(ctx.experiment_id)
        data = json.dumps(result, indent=2).encode()
        ctx.retrying(f"upload {key}", lambda: ctx.storage.put_bytes(key, data, "application/json"))
        return StageOutput(
            result=result,
            wandb=run,
            artifacts=[("profile", key, len(data)), *ctx.store_wandb(run)],
        )


PROFILE = ProfileStage()
