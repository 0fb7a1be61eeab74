"""`distillery run` of a sweep: every child on this machine, shared stages trained once.

The plan comes from `distillery.sweeps.plan_sweep`. Each shared teacher and each student baseline
(one per seed) runs as its own `distillery.pipeline.run_local` experiment under
``<run_dir>/teachers/<key>`` and ``<run_dir>/baselines/<key>``; each child (configuration x seed)
then runs only its distillation stage (plus the profile stage for the first child of each distinct
student architecture, `profile_key`: latency does not depend on the weights) under
``<run_dir>/children/<configuration>/seed-<seed>``, reading the shared teacher's exported model
through ``teacher.model.checkpoint``; children with `distillation.teacher_cache` share
``<run_dir>/teacher_cache``. A failed stage fails only the children that need it; the
others run. Running the same sweep again resumes every part where it stopped.

The parent's ``results.json``/``results.md`` hold the comparison table of
`distillery.research.summary`, with bias–variance over seeds per configuration and the baseline,
and each teacher's mean entropy and ECE (``analyses=True``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distillery.research.summary import sweep_markdown
from distillery.spec import ExperimentSpec
from distillery.stages.sweep_results import (
    Outcome,
    add_compute_matched,
    log_sweep,
    matched_epochs,
    profile_key,
    summarize,
    write_samples,
)
from distillery.sweeps import SweepPlan, baseline_identity, content_hash, plan_sweep


def _run(
    spec: ExperimentSpec,
    run_dir: Path,
    fresh: bool,
    on_progress: Callable[[str, Any], None] | None,
    teacher_cache_dir: Path | None = None,
) -> Outcome:
    from distillery.pipeline import run_local

    start = time.perf_counter()
    try:
        results = run_local(
            spec,
            run_dir,
            fresh=fresh,
            on_progress=on_progress,
            teacher_cache_dir=teacher_cache_dir,
        )
        return Outcome(run_dir, results, None, time.perf_counter() - start)
    except Exception as e:  # a failed part must not sink the sweep
        return Outcome(run_dir, None, f"{type(e).__name__}: {e}", time.perf_counter() - start)


def _with_teacher(spec: ExperimentSpec, path: Path | None, stages: list[str]) -> ExperimentSpec:
    update: dict[str, Any] = {"stages": stages}
    if path is not None:
        model = spec.teacher.model.model_copy(update={"checkpoint": str(path)})
        update["teacher"] = spec.teacher.model_copy(update={"model": model})
    return spec.model_copy(update=update)


def run_sweep(
    spec: ExperimentSpec,
    run_dir: Path,
    *,
    fresh: bool = False,
    analyses: bool = True,
    on_event: Callable[[str], None] | None = None,
    on_progress: Callable[[str, Any], None] | None = None,
) -> dict[str, Any]:
    """Run the sweep of `spec` here; returns (and writes) the parent's results table."""
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_sweep(spec)
    say = on_event or (lambda _msg: None)
    (run_dir / "plan.json").write_text(json.dumps(plan.as_dict(), indent=2))
    total = len(plan.teachers) + len(plan.baselines) + len(plan.children)
    done = 0

    def step(what: str, outcome: Outcome) -> None:
        nonlocal done
        done += 1
        status = (
            "failed: " + outcome.error if outcome.error else f"done in {outcome.wall_time_s:.0f}s"
        )
        say(f"[{done}/{total}] {what}: {status}")

    teachers: dict[str, Outcome] = {}
    for key, shared in plan.teachers.items():
        say(f"teacher {key} (seed {shared.seed}) for {len(shared.used_by)} children")
        teachers[key] = _run(shared.spec, run_dir / "teachers" / key, fresh, on_progress)
        step(f"teacher {key}", teachers[key])

    baselines: dict[str, Outcome] = {}
    for key, shared in plan.baselines.items():
        say(f"student baseline {key} (seed {shared.seed}) for {len(shared.used_by)} children")
        baselines[key] = _run(shared.spec, run_dir / "baselines" / key, fresh, on_progress)
        step(f"baseline {key}", baselines[key])

    children: dict[tuple[str, int], Outcome] = {}
    profiled: dict[str, tuple[str, int]] = {}  # profile key -> the child that profiles it
    for child in plan.children:
        name = f"{child.configuration} seed {child.seed}"
        teacher = teachers.get(child.teacher_key) if child.teacher_key else None
        if teacher is not None and teacher.model_path("teacher") is None:
            outcome = Outcome(run_dir, None, f"its teacher failed ({teacher.error})", 0.0)
        else:
            stages = ["distill"]
            p_key = profile_key(child.spec)
            if "profile" in spec.stages and p_key not in profiled:
                stages.append("profile")
                profiled[p_key] = (child.configuration, child.seed)
            child_spec = _with_teacher(
                child.spec, teacher.model_path("teacher") if teacher else None, stages
            )
            folder = run_dir / "children" / child.configuration / f"seed-{child.seed}"
            say(f"child {name}")
            # one teacher cache folder for all children (a cache is keyed by its content)
            outcome = _run(child_spec, folder, fresh, on_progress, run_dir / "teacher_cache")
        children[(child.configuration, child.seed)] = outcome
        step(f"child {name}", outcome)

    matched: dict[tuple[str, int], tuple[int | None, Outcome]] = {}
    if plan.compute_matched:
        matched = _compute_matched(plan, baselines, children, run_dir, fresh, say, on_progress)
    results = summarize(spec, plan, teachers, baselines, children, analyses=analyses, say=say)
    if analyses:
        samples = write_samples(
            spec, plan, teachers, baselines, children, results, run_dir / "samples.png"
        )
        results["samples_png"] = samples.name if samples else None
    if plan.compute_matched:
        add_compute_matched(results, matched)
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    (run_dir / "results.md").write_text(sweep_markdown(results))
    from distillery.research.report import write_report

    report = write_report(run_dir)
    results["wandb"] = log_sweep(spec, results, report.parent, run_dir, group=spec.name)
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    return results


def _compute_matched(
    plan: SweepPlan,
    baselines: dict[str, Outcome],
    children: dict[tuple[str, int], Outcome],
    run_dir: Path,
    fresh: bool,
    say: Callable[[str], None],
    on_progress: Callable[[str, Any], None] | None,
) -> dict[tuple[str, int], tuple[int | None, Outcome]]:
    """Per child (`SweepPlan.matched`): a student-alone baseline given the epochs that take as
    long to train as the child's distillation did, ``round(epochs * t_distill / t_baseline)``
    (at least 1), at the same seed. Baselines of equal epochs are shared (by content hash);
    equal to the plain baseline's epochs, the plain baseline is that baseline. One that cannot
    be trained (the child or the baseline recorded no training time) is a failed outcome with
    no epochs."""
    runs: dict[str, Outcome] = {}
    out: dict[tuple[str, int], tuple[int | None, Outcome]] = {}
    for child in plan.matched:
        base = baselines.get(child.baseline_key or "")
        outcome = children[(child.configuration, child.seed)]
        t_distill = outcome.train_time_s("distill")
        t_base = base.train_time_s("student") if base else None
        if base is None or child.baseline_key is None or not t_distill or not t_base:
            which = "child's distillation" if not t_distill else "baseline"
            error = f"not run: its {which} recorded no training time"
            out[(child.configuration, child.seed)] = (None, Outcome(run_dir, None, error, 0.0))
            continue
        b_spec = plan.baselines[child.baseline_key].spec
        epochs = matched_epochs(b_spec.student.train.epochs, t_distill, t_base)
        if epochs == b_spec.student.train.epochs:
            out[(child.configuration, child.seed)] = (epochs, base)
            continue
        train = b_spec.student.train.model_copy(update={"epochs": epochs})
        student = b_spec.student.model_copy(update={"train": train})
        m_spec = b_spec.model_copy(update={"student": student})
        key = content_hash(baseline_identity(m_spec))
        if key not in runs:
            m_spec = m_spec.model_copy(update={"name": f"{plan.name}.matched-{key[:8]}"})
            say(f"compute-matched baseline {key}: seed {child.seed}, {epochs} epochs")
            runs[key] = _run(m_spec, run_dir / "matched" / key, fresh, on_progress)
            status = runs[key].error or f"done in {runs[key].wall_time_s:.0f}s"
            say(f"compute-matched baseline {key}: {status}")
        out[(child.configuration, child.seed)] = (epochs, runs[key])
    return out
