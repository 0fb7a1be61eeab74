"""`compare`: a sweep's comparison table and report, once every member has ended (sweep level).

Planned once for a sweep's parent (`distillery.stages.sweep_plan`), on the profiler queue; it
needs every stage of every member (`stage_needs`) and runs `after_failures`: a failed child is
a row with its error, not the end of the sweep. It downloads each member's stage results
(metrics, history), exported models and results table into a folder laid out like the artifacts
store, builds the table of `distillery.stages.sweep_results` (the one `distillery run` writes
for a local sweep: statistics, bias–variance over seeds, each teacher's entropy and ECE)
and draws the sample predictions (teacher, baseline and best configuration on validation
images, `sweep_results.write_samples`, as a local sweep does), then stores ``results.json``
(``configurations``, ``baseline``, ``plan``, ``parts``, ``samples_png``, ...) and ``report.md``
as the parent's artifacts, with the report's Markdown and PNGs (``samples.png`` among them)
under ``report/`` (`distillery.research.report`); the table is also the parent's `results`.
The table and the PNGs are logged to a wandb run (job type ``sweep``, as `distillery run` of a
sweep logs).

A member retried on its own (`lifecycle.retry`) queues this stage again; it waits for the
retried member (and the members queued again with it: a compute-matched baseline that failed
for it) and then compares everything anew, so the table and report include it. A member
retried while this stage runs makes it run again: it ends queued instead of succeeded, with
nothing of this run recorded (`lifecycle.succeed`), and compares anew once the retried member
has ended.

If the analyses that read the models and the data fail (the data unreachable from the profiler
worker, say), the table is built without them (and without sample predictions) and
``analyses_error`` says why.

With ``sweep.compute_matched_baseline``, each child's compute-matched baseline is a member of
its own (``matched``: a `student` stage that needed the child's `distill` and its baseline's
`student` and trained as long as the distillation did); each configuration's row then carries
``compute_matched`` (`sweep_results.add_compute_matched`, as locally): per seed the matched
baseline's epochs and mIoU and the gain over it, the mean and its 95% paired t-interval; and
``parts.matched`` lists every matched baseline (a failed one too) as ``parts`` lists the others.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal

from distillery.spec import ExperimentSpec
from distillery.stages import keys
from distillery.stages.kinds import Queue, StageContext, StageKind, StageOutput
from distillery.stages.lifecycle import Part

#: The stages whose stored results (metrics, history) the table reads.
TRAINED = ("teacher", "student", "distill")


class CompareStage(StageKind):
    name: ClassVar[str] = "compare"
    queue: ClassVar[Queue] = "profiler"
    level: ClassVar[Literal["experiment", "sweep"]] = "sweep"
    after_failures: ClassVar[bool] = True

    def planned(self, spec: ExperimentSpec) -> bool:
        """Every sweep compares its children."""
        return spec.sweep is not None

    def _download_json(self, ctx: StageContext, key: str) -> Any:
        if not ctx.retrying(f"look up {key}", lambda: ctx.storage.exists(key)):
            return None
        return json.loads(ctx.retrying(f"download {key}", lambda: ctx.storage.get_bytes(key)))

    def run(self, ctx: StageContext) -> StageOutput:
        from distillery.stages.sweep_results import (
            Outcome,
            add_compute_matched,
            log_sweep,
            summarize,
            write_samples,
        )
        from distillery.sweeps import plan_sweep

        plan = plan_sweep(ctx.spec)
        by_member: dict[str, list[Part]] = {}
        for part in ctx.inputs.parts:
            by_member.setdefault(part.experiment_id, []).append(part)
        teachers: dict[str, Outcome] = {}
        baselines: dict[str, Outcome] = {}
        children: dict[tuple[str, int], Outcome] = {}
        matched: dict[tuple[str, int], tuple[int | None, Outcome]] = {}
        for member, parts in by_member.items():
            info = parts[0].sweep or {}
            outcome = self._outcome(ctx, member, parts)
            if info.get("role") == "teacher":
                teachers[info["key"]] = outcome
            elif info.get("role") == "baseline":
                baselines[info["key"]] = outcome
            elif info.get("role") == "child":
                children[(info["configuration"], int(info["seed"]))] = outcome
            elif info.get("role") == "matched":
                student = next((p for p in parts if p.name == "student"), None)
                epochs = ((student.result if student else None) or {}).get("epochs")
                matched[(info["configuration"], int(info["seed"]))] = (epochs, outcome)
        for child in plan.children:  # a member that is gone (deleted) is a failed part
            key = (child.configuration, child.seed)
            if key not in children:
                children[key] = Outcome(ctx.workdir, None, "its experiment is gone", 0.0)
        for child in plan.matched:
            key = (child.configuration, child.seed)
            if key not in matched:
                matched[key] = (None, Outcome(ctx.workdir, None, "its experiment is gone", 0.0))
        resolve = getattr(ctx.hooks, "resolve_root", None)
        try:
            results = summarize(ctx.spec, plan, teachers, baselines, children, resolve_root=resolve)
            results["analyses_error"] = None
        except Exception as e:  # noqa: BLE001 - the table stands without the analyses
            results = summarize(ctx.spec, plan, teachers, baselines, children, analyses=False)
            results["analyses_error"] = f"{type(e).__name__}: {e}"
        add_compute_matched(results, matched)
        results["samples_png"] = None
        if results["analyses_error"] is None:
            folder = ctx.workdir / "comparison"
            folder.mkdir(parents=True, exist_ok=True)
            try:
                samples = write_samples(
                    ctx.spec, plan, teachers, baselines, children, results,
                    folder / "samples.png", resolve_root=resolve,
                )  # fmt: skip
                results["samples_png"] = samples.name if samples else None
            except Exception as e:  # noqa: BLE001 - the report stands without them
                results["analyses_error"] = f"sample predictions: {type(e).__name__}: {e}"
        results["experiment_id"] = ctx.experiment_id
        artifacts = self._store(ctx, results)
        run = log_sweep(
            ctx.spec,
            results,
            ctx.workdir / "comparison" / "report",
            ctx.workdir / "sweep-run",
            group=ctx.tracker_group,
        )
        return StageOutput(result=results, wandb=run, artifacts=[*artifacts, *ctx.store_wandb(run)])

    def _store(self, ctx: StageContext, results: dict[str, Any]) -> list[Any]:
        """``results.json``, ``report.md`` and ``report/`` (Markdown and PNGs) of the sweep."""
        from distillery.research.report import write_report
        from distillery.research.summary import sweep_markdown

        exp = ctx.experiment_id
        table = json.dumps(results, indent=2, default=str).encode()
        summary = sweep_markdown(results).encode()
        folder = ctx.workdir / "comparison"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_bytes(table)
        files = [
            ("results", keys.results_key(exp), table, "application/json"),
            ("report", keys.report_key(exp), summary, "text/markdown"),
        ]
        report = write_report(folder, folder / "report")
        for path in sorted(report.parent.glob("*.png")) + [report]:
            kind = "text/markdown" if path.suffix == ".md" else "image/png"
            files.append(("report", keys.report_file_key(exp, path.name), path.read_bytes(), kind))
        artifacts = []
        for kind, key, data, content_type in files:
            ctx.retrying(
                f"upload {key}",
                lambda k=key, d=data, c=content_type: ctx.storage.put_bytes(k, d, c),
            )
            artifacts.append((kind, key, len(data)))
        return artifacts

    def _outcome(self, ctx: StageContext, member: str, parts: list[Part]) -> Any:
        """The member as an `Outcome`: its stage results downloaded into a folder laid out like
        the artifacts store, its results table, the first error among its stages and the sum
        of its stages' wall times."""
        from distillery.stages.sweep_results import Outcome

        folder = ctx.workdir / "parts"
        for part in parts:
            if part.status != "succeeded" or part.name not in TRAINED:
                continue
            wanted = [keys.stage_results_key(member, part.name)]
            if part.model_key:
                wanted.append(keys.model_key(member, part.name))
            for key in wanted:
                path = folder / key
                if not path.is_file():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    ctx.retrying(
                        f"download {key}", lambda k=key, p=path: ctx.storage.get_file(k, p)
                    )
        table = self._download_json(ctx, keys.results_key(member)) or {}
        error = next(
            (f"{p.name} {p.status}: {p.error}" for p in parts if p.status != "succeeded"), None
        )
        wall = sum(p.wall_time_s or 0.0 for p in parts)
        results = {"experiment_id": member, "rows": table.get("rows", [])}
        return Outcome(folder, results, error, wall, experiment_id=member)


COMPARE = CompareStage()
