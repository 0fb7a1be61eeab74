"""`report`: the experiment's report, Markdown + PNG plots (`distillery.research.report`).

Planned when `stages` lists `report`; runs last, on the profiler queue. Reads the stored results
of the training stages and the profile and writes ``report/report.md`` with ``per_class_iou.png``
(teacher, baseline, distilled), ``pareto.png`` (mIoU vs latency) and ``samples.png`` (the
models' predictions on validation images), each an artifact of kind ``report`` (so
``GET /experiments/{id}`` links them), and logs the comparison table and the plots to a wandb run
(job type ``report``, stored under ``wandb/`` like every stage's run).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

from distillery.stages import keys
from distillery.stages.kinds import Queue, StageContext, StageKind, StageOutput

TRAINED = ("teacher", "student", "distill")


@dataclass
class _Stored:
    name: str
    result: dict[str, Any] | None


class ReportStage(StageKind):
    name: ClassVar[str] = "report"
    queue: ClassVar[Queue] = "profiler"
    reads: ClassVar[tuple[str, ...]] = ("size", "teacher", "student", "distill", "profile")

    def _stored(self, ctx: StageContext, key: str) -> dict[str, Any] | None:
        if not ctx.retrying(f"look up {key}", lambda: ctx.storage.exists(key)):
            return None
        return json.loads(ctx.retrying(f"download {key}", lambda: ctx.storage.get_bytes(key)))

    def run(self, ctx: StageContext) -> StageOutput:
        from distillery.research.predict import sample_predictions
        from distillery.research.report import write_report
        from distillery.stages.results import build_results

        exp = ctx.experiment_id
        stored = [
            _Stored(name, self._stored(ctx, keys.stage_results_key(exp, name))) for name in TRAINED
        ]
        stored = [s for s in stored if s.result is not None]
        profile = self._stored(ctx, keys.profile_key(exp))
        if profile is not None:
            stored.append(_Stored("profile", profile))
        results = build_results(stored)  # type: ignore[arg-type]
        results["experiment_id"] = exp
        labels = {r["stage"]: r["model"] for r in results["rows"]}
        results["iou_by_model"] = {
            labels[s.name]: (s.result or {}).get("metrics", {}).get("iou") or {}
            for s in stored
            if s.name in labels
        }
        folder = ctx.workdir / "report"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(json.dumps(results, indent=2, default=str))
        models = {}
        for name in TRAINED:
            key = ctx.inputs.models.get(name)
            if key is None:
                continue
            path = ctx.workdir / "models" / f"{name}.pt"
            if not path.is_file():
                ctx.retrying(f"download {key}", lambda k=key, p=path: ctx.storage.get_file(k, p))
            models[labels.get(name, name)] = path
        if models:
            resolve = getattr(ctx.hooks, "resolve_root", None)
            sample_predictions(models, ctx.spec.data, folder / "samples.png", resolve_root=resolve)
        report = write_report(folder, folder)
        plots = sorted(folder.glob("*.png"))
        artifacts = []
        for path in [*plots, report]:
            key = keys.report_file_key(exp, path.name)
            ctx.retrying(f"upload {key}", lambda k=key, p=path: ctx.storage.put_file(k, p))
            artifacts.append(("report", key, path.stat().st_size))
        from distillery.stages.profile_tracking import log_comparison

        run = log_comparison(
            results,
            ctx.spec,
            ctx.workdir / "report-run",
            group=ctx.tracker_group,
            job_type="report",
            plots=plots,
        )
        return StageOutput(
            result={"files": [a[1] for a in artifacts]},
            wandb=run,
            artifacts=[*artifacts, *ctx.store_wandb(run)],
        )


REPORT = ReportStage()
