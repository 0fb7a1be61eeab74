"""A sweep's comparison table from its parts' outcomes, for `distillery run` of a sweep
(`distillery.sweep_local`, parts in local folders) and the sweep's `compare` stage on the
queue (`distillery.stages.compare`, parts downloaded from the artifacts store) alike.

An `Outcome` is one part (a shared teacher, a student baseline or a child) as a folder laid out
like the artifacts store (``<run_dir>/artifacts/<experiment>/<stage>/results.json``, ...), its
experiment's results, its error and its wall time; `summarize` builds the table of
`distillery.research.summary` from them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillery.research.stats import paired_interval
from distillery.research.summary import ConfigResult, SeedResult, sweep_summary
from distillery.spec import DatasetRef, ExperimentSpec
from distillery.stages import keys
from distillery.sweeps import SweepPlan, content_hash, teacher_identity


@dataclass
class Outcome:
    """One part of a sweep: its folder (laid out like the artifacts store), its experiment's
    results (``experiment_id``, ``rows``), its error and its wall time; on the queue also its
    experiment's id."""

    run_dir: Path
    results: dict[str, Any] | None
    error: str | None
    wall_time_s: float
    experiment_id: str | None = None

    def model_path(self, stage: str) -> Path | None:
        if self.results is None:
            return None
        path = self.run_dir / keys.model_key(self.results["experiment_id"], stage)
        return path if path.is_file() else None

    def _payload(self, stage: str) -> dict[str, Any] | None:
        if self.results is None:
            return None
        path = self.run_dir / keys.stage_results_key(self.results["experiment_id"], stage)
        return json.loads(path.read_text()) if path.is_file() else None

    def metrics(self, stage: str) -> dict[str, Any] | None:
        """The stage's validation metrics (mIoU and per-class IoU), None if it did not run."""
        return (self._payload(stage) or {}).get("metrics")

    def train_time_s(self, stage: str) -> float | None:
        """The stage's training time (`history_train_time`)."""
        return history_train_time((self._payload(stage) or {}).get("history") or [])

    def row(self, stage: str) -> dict[str, Any]:
        rows = (self.results or {}).get("rows", [])
        return next((r for r in rows if r["stage"] == stage), {})


def history_train_time(history: list[dict[str, Any]]) -> float | None:
    """A training's time from its history: the sum of its epochs' ``train.time_s`` (the same
    when it was resumed; evaluation left out); None without a complete history."""
    times = [h.get("train", {}).get("time_s") for h in history]
    return float(sum(times)) if times and None not in times else None


def profile_key(spec: ExperimentSpec) -> str:
    """What the student's latency depends on: its architecture and the profiling settings."""
    dump = spec.model_dump(mode="json")
    return content_hash({"student": dump["student"]["model"], "profiling": dump["profiling"]})


def _seed_result(outcome: Outcome, stage: str, seed: int) -> SeedResult | None:
    metrics = outcome.metrics(stage)
    if metrics is None:
        return None
    wall = outcome.train_time_s(stage)
    return SeedResult(seed, metrics["miou"], metrics.get("iou") or {}, wall)


def summarize(
    spec: ExperimentSpec,
    plan: SweepPlan,
    teachers: dict[str, Outcome],
    baselines: dict[str, Outcome],
    children: dict[tuple[str, int], Outcome],
    *,
    analyses: bool = True,
    say: Callable[[str], None] = lambda _m: None,
    resolve_root: Callable[[DatasetRef], Path] | None = None,
) -> dict[str, Any]:
    """The parent's results from its parts' outcomes (see `distillery.research.summary`)."""
    from distillery.research.predict import evaluate_model, seeds_bias_variance, teacher_calibration

    # ---- teachers: mIoU always (a given checkpoint is evaluated), entropy and ECE
    teacher_miou: dict[str | None, float | None] = {}
    teacher_facts: dict[str | None, dict[str, Any]] = {}
    for key, outcome in teachers.items():
        metrics = outcome.metrics("teacher")
        teacher_miou[key] = metrics["miou"] if metrics else None
        path = outcome.model_path("teacher")
        facts: dict[str, Any] = {"teacher_key": key, "teacher_error": outcome.error}
        if analyses and path is not None:
            say(f"teacher {key}: entropy and calibration")
            cal = teacher_calibration(path, spec.data, resolve_root=resolve_root)
            facts.update(teacher_entropy=cal.normalized_entropy, teacher_ece=cal.ece)
        teacher_facts[key] = facts
    given = spec.teacher.model.checkpoint
    if not teachers and given and Path(given).is_file():
        say("teacher checkpoint: evaluating its mIoU")
        teacher_miou[None] = float(
            evaluate_model(given, spec.data, resolve_root=resolve_root)["miou"]
        )  # type: ignore[arg-type]
        facts = {"teacher_key": None}
        if analyses:
            cal = teacher_calibration(given, spec.data, resolve_root=resolve_root)
            facts.update(teacher_entropy=cal.normalized_entropy, teacher_ece=cal.ece)
        teacher_facts[None] = facts
    base_ident = teacher_identity(spec.model_copy(update={"sweep": None}), spec.seed)
    base_key = content_hash(base_ident) if base_ident else None
    top_teacher = teacher_miou.get(base_key, next(iter(teacher_miou.values()), None))

    # ---- baseline per seed (the children of the first configuration define which is whose)
    baseline_results: list[SeedResult] = []
    baseline_paths: list[Path] = []
    seen: set[int] = set()
    for child in plan.children:
        outcome = baselines.get(child.baseline_key or "")
        if outcome is None or child.seed in seen:
            continue
        seen.add(child.seed)
        result = _seed_result(outcome, "student", child.seed)
        if result is not None:
            baseline_results.append(result)
            if (path := outcome.model_path("student")) is not None:
                baseline_paths.append(path)

    first = plan.configurations[0].name if plan.configurations else None
    common_keys = {c.baseline_key for c in plan.children if c.configuration == first}
    configs: list[ConfigResult] = []
    paths_by_config: dict[str, list[Path]] = {}
    for config in plan.configurations:
        mine = [c for c in plan.children if c.configuration == config.name]
        seeds: list[SeedResult] = []
        failed: dict[int, str] = {}
        for child in mine:
            outcome = children[(config.name, child.seed)]
            result = _seed_result(outcome, "distill", child.seed)
            if result is None:
                failed[child.seed] = outcome.error or "no distill result"
                continue
            seeds.append(result)
            if (path := outcome.model_path("distill")) is not None:
                paths_by_config.setdefault(config.name, []).append(path)
        t_key = mine[0].teacher_key if mine else None
        extra: dict[str, Any] = dict(teacher_facts.get(t_key, {}))
        outcomes = [children[(config.name, c.seed)] for c in mine]
        wall = sum(o.train_time_s("distill") or 0.0 for o in outcomes)
        row = _profiled_row(plan, children, mine[0]) if mine else {}
        extra.update(
            latency_ms=row.get("latency_ms"),
            params=row.get("params"),
            wall_time_s_total=wall,
            device_hours=wall * spec.distill_train.num_processes / 3600,
        )
        own = None
        if mine and {c.baseline_key for c in mine} != common_keys:
            own = [
                r
                for c in mine
                if c.baseline_key in baselines
                and (r := _seed_result(baselines[c.baseline_key], "student", c.seed)) is not None
            ]
        configs.append(
            ConfigResult(
                config.name,
                config.overrides,
                seeds,
                teacher_miou=teacher_miou.get(t_key, top_teacher),
                failed=failed,
                extra=extra,
                baseline=own,
            )
        )
    results = sweep_summary(configs, baseline_results, top_teacher)
    # the baseline's student is the children's unless a configuration changes `student.*`
    same_student = [
        c.extra.get("latency_ms")
        for c in configs
        if not any(p.startswith("student") for p in c.overrides)
    ]
    results["baseline_latency_ms"] = next((v for v in same_student if v is not None), None)
    if analyses:
        if len(baseline_paths) >= 2:
            say("baseline: bias and variance over seeds")
            bv = seeds_bias_variance(baseline_paths, spec.data, resolve_root=resolve_root)
            results["baseline"]["bias_variance"] = bv.as_dict()
        for row in results["configurations"]:
            paths = paths_by_config.get(row["name"], [])
            if len(paths) >= 2:
                say(f"{row['name']}: bias and variance over seeds")
                bv = seeds_bias_variance(paths, spec.data, resolve_root=resolve_root)
                row["bias_variance"] = bv.as_dict()
    results["plan"] = plan.as_dict()
    results["parts"] = {
        "teachers": {k: _part(o) for k, o in teachers.items()},
        "baselines": {k: _part(o) for k, o in baselines.items()},
        "children": [{"configuration": c, "seed": s, **_part(o)} for (c, s), o in children.items()],
    }
    n_failed = sum(o.error is not None for o in children.values())
    results["status"] = (
        "succeeded" if n_failed == 0 else "failed" if n_failed == len(children) else "partial"
    )
    return results


def write_samples(
    spec: ExperimentSpec,
    plan: SweepPlan,
    teachers: dict[str, Outcome],
    baselines: dict[str, Outcome],
    children: dict[tuple[str, int], Outcome],
    results: dict[str, Any],
    out: Path,
    *,
    resolve_root: Callable[[DatasetRef], Path] | None = None,
) -> Path | None:
    """The sample-predictions PNG at `out` (the report's ``samples.png``): teacher, baseline
    and best configuration on two validation images (the first seed of each); None when no
    part left a model. `distillery run` and the queue's `compare` stage both call it."""
    from distillery.research.predict import sample_predictions

    models: dict[str, Path] = {}
    teacher = next(
        (o.model_path("teacher") for o in teachers.values() if o.model_path("teacher")), None
    )
    if teacher is not None:
        models["teacher"] = teacher
    first = plan.children[0] if plan.children else None
    base = baselines.get(first.baseline_key or "") if first else None
    if base is not None and (path := base.model_path("student")) is not None:
        models[f"baseline (seed {first.seed})"] = path  # type: ignore[union-attr]
    best = results.get("best")
    for child in plan.children:
        if child.configuration == best:
            path = children[(best, child.seed)].model_path("distill")
            if path is not None:
                models[f"{best} (seed {child.seed})"] = path
                break
    if not models:
        return None
    return sample_predictions(models, spec.data, out, resolve_root=resolve_root)


def _profiled_row(
    plan: SweepPlan, children: dict[tuple[str, int], Outcome], child: Any
) -> dict[str, Any]:
    """The distill row (latency, params) of the child that profiled `child`'s architecture."""
    key = profile_key(child.spec)
    for other in plan.children:
        if profile_key(other.spec) == key:
            row = children[(other.configuration, other.seed)].row("distill")
            if row.get("latency_ms") is not None:
                return row
    return children[(child.configuration, child.seed)].row("distill")


def _part(outcome: Outcome) -> dict[str, Any]:
    where = (
        {"experiment_id": outcome.experiment_id}
        if outcome.experiment_id
        else {"run_dir": str(outcome.run_dir)}
    )
    return {
        **where,
        "status": "failed" if outcome.error else "succeeded",
        "error": outcome.error,
        "wall_time_s": outcome.wall_time_s,
    }


def log_sweep(
    spec: ExperimentSpec, results: dict[str, Any], report_dir: Path, run_dir: Path, *, group: str
) -> dict[str, Any] | None:
    """Log the sweep's table (run summary: per configuration mIoU, gain, its CI, gap closed)
    and the report's PNGs to one wandb run (``job_type: sweep``) of `group`; None when
    tracking is off. `distillery run` and the queue's `compare` stage both call it."""
    from distillery.tracking import Tracker

    tracker = Tracker(
        spec.tracking,
        run_dir,
        name=f"{spec.name}-sweep",
        group=group,
        config=spec.model_dump(mode="json"),
        job_type="sweep",
    )
    if not tracker.active:
        return None
    summary: dict[str, Any] = {
        "teacher_miou": results.get("teacher_miou"),
        "baseline/miou_mean": results["baseline"].get("miou_mean"),
    }
    for c in results["configurations"]:
        ci = c.get("gain_ci95") or [None, None]
        summary.update(
            {
                f"{c['name']}/miou_mean": c["miou_mean"],
                f"{c['name']}/gain_mean": c["gain_mean"],
                f"{c['name']}/gain_ci95_low": ci[0],
                f"{c['name']}/gain_ci95_high": ci[1],
                f"{c['name']}/gap_closed_mean": c["gap_closed_mean"],
            }
        )
    tracker.summary({k: v for k, v in summary.items() if v is not None})
    tracker.log_pngs("report", sorted(report_dir.glob("*.png")), step=0)
    info = {"id": tracker.run_id, "dir": str(tracker.run_dir), "url": tracker.url}
    tracker.finish()
    return info


def matched_epochs(epochs: int, t_distill: float, t_baseline: float) -> int:
    """Epochs of a student-alone run that trains as long as the distillation did:
    ``max(1, round(epochs * t_distill / t_baseline))``."""
    if t_baseline <= 0:
        raise ValueError(f"the baseline's training time must be > 0, got {t_baseline}")
    return max(1, round(epochs * t_distill / t_baseline))


def add_compute_matched(
    results: dict[str, Any], matched: dict[tuple[str, int], tuple[int | None, Outcome]]
) -> None:
    """Add ``compute_matched`` to each configuration row: per seed the matched baseline's epochs
    and mIoU and the gain over it, with the mean and 95% paired t-interval; and list every
    matched baseline (configuration, seed, epochs, outcome; a failed one or one never trained
    with epochs None) in ``parts.matched``, as the other parts are."""
    results.setdefault("parts", {})["matched"] = [
        {"configuration": c, "seed": s, "epochs": epochs, **_part(o)}
        for (c, s), (epochs, o) in matched.items()
    ]
    for row in results["configurations"]:
        per_seed, mine, theirs = [], {}, {}
        for r in row["per_seed"]:
            entry = matched.get((row["name"], r["seed"]))
            if entry is None:
                continue
            epochs, outcome = entry
            metrics = outcome.metrics("student")
            if metrics is None or epochs is None:
                continue
            mine[r["seed"]], theirs[r["seed"]] = r["miou"], metrics["miou"]
            per_seed.append(
                {
                    "seed": r["seed"],
                    "epochs": epochs,
                    "miou": metrics["miou"],
                    "gain": r["miou"] - metrics["miou"],
                }
            )
        if not per_seed:
            continue
        interval = paired_interval(mine, theirs)
        row["compute_matched"] = {
            "per_seed": per_seed,
            "gain_mean": interval.mean if interval else None,
            "gain_ci95": interval.as_list() if interval else None,
            "distinguishable": bool(interval and interval.excludes_zero),
        }
