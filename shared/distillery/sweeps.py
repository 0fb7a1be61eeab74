"""Sweeps: one spec with a `sweep:` section -> child configurations x seeds, and the plan of the
stages they share. Pure (no torch, no I/O): `distillery run`/`submit --dry-run` print it before
anything runs, and `distillery.sweep_local` executes it.

- Configurations: the product of `sweep.grid` (dotted paths into the base spec -> values), plus
  each of `sweep.configurations` (the base spec + its overrides, not crossed with the grid); the
  base spec itself when both are empty. Each runs once per seed of `sweep.seeds` (student seeds).
- Sharing: a stage is identified by a content hash of what determines it, so identical stages
  across children are planned once:
  - teacher: ``data``, ``teacher`` (model, train, losses) and the base spec's ``seed`` (one
    teacher for every student seed; a grid over ``teacher.*`` makes several);
  - baseline (the student trained alone): ``data``, ``student``, the seed (and ``profiling``
    when the width is ``auto``): one per seed for all recipes;
  - distill: everything else; one per child and seed.
- Compute-matched baselines (``sweep.compute_matched_baseline``): one per child that has a
  baseline, never shared (its epochs depend on the child's measured training time); the plan
  lists them (`SweepPlan.matched`) and counts their `student` stages as ``matched``.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distillery.spec import ExperimentSpec, SweepSpec


class SweepError(ValueError):
    """A sweep that cannot expand; the message names the path or configuration."""


_MISSING = object()


def _step(node: Any, part: str) -> Any:
    if isinstance(node, Mapping):
        return node.get(part, _MISSING)
    if isinstance(node, list) and re.fullmatch(r"\d+", part):
        i = int(part)
        return node[i] if i < len(node) else _MISSING
    return _MISSING


def _describe(node: Any) -> str:
    if isinstance(node, Mapping):
        return "keys: " + (", ".join(sorted(node)) or "none")
    if isinstance(node, list):
        return f"a list of {len(node)} (indices 0..{len(node) - 1})"
    return f"a value ({node!r}), not a mapping or list"


def get_path(tree: Any, path: str) -> Any:
    """The value at dotted `path` (list items by index); SweepError naming the first missing
    part and what is there instead."""
    node = tree
    parts = path.split(".")
    for i, part in enumerate(parts):
        nxt = _step(node, part)
        if nxt is _MISSING:
            where = ".".join(parts[:i]) or "the spec"
            raise SweepError(
                f"path {path!r} does not exist in the spec: {where} has no {part!r} "
                f"({_describe(node)})"
            )
        node = nxt
    return node


def set_path(tree: Any, path: str, value: Any) -> Any:
    """A deep copy of `tree` with `path` (which must exist) set to `value`."""
    get_path(tree, path)
    out = copy.deepcopy(tree)
    parts = path.split(".")
    node = out
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = copy.deepcopy(value)
    else:
        node[last] = copy.deepcopy(value)
    return out


def content_hash(obj: Any) -> str:
    """12 hex digits of the SHA-256 of `obj` as canonical JSON (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------- expansion


@dataclass(frozen=True)
class Configuration:
    """One child configuration: its name and the overrides applied to the base spec."""

    name: str
    overrides: dict[str, Any]


def _slug(value: Any) -> str | None:
    if isinstance(value, bool | int | float | str) and not isinstance(value, bool):
        s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(value)).strip("_")
        return s or None
    if isinstance(value, bool):
        return str(value).lower()
    return None


def _grid_name(path: str, value: Any, index: int) -> str:
    key = next((p for p in reversed(path.split(".")) if not p.isdigit()), path)
    slug = _slug(value)
    return f"{key}-{slug if slug is not None else index}"


def configurations(sweep: Any) -> list[Configuration]:
    """The grid's product (in the order its paths are given), then the listed configurations;
    the base spec ("base") when there is neither."""
    out: list[Configuration] = []
    grid: dict[str, list[Any]] = dict(sweep.grid)
    if grid:
        paths = list(grid)
        for combo in itertools.product(*(list(enumerate(grid[p])) for p in paths)):
            name = "_".join(_grid_name(p, v, i) for p, (i, v) in zip(paths, combo, strict=True))
            out.append(Configuration(name, {p: v for p, (_, v) in zip(paths, combo, strict=True)}))
    out += [Configuration(c.name, dict(c.overrides)) for c in sweep.configurations]
    if not out:
        out.append(Configuration("base", {}))
    seen: set[str] = set()
    for c in out:
        if c.name in seen:
            raise SweepError(f"sweep: two configurations are named {c.name!r}; names must differ")
        seen.add(c.name)
    return out


def _base_tree(spec: ExperimentSpec) -> dict[str, Any]:
    tree = spec.model_dump(mode="json")
    tree.pop("sweep", None)
    return tree


def configuration_spec(spec: ExperimentSpec, config: Configuration) -> ExperimentSpec:
    """The base spec (without its sweep) with `config`'s overrides, validated."""
    from pydantic import ValidationError

    from distillery.spec import ExperimentSpec, format_validation_error

    tree = _base_tree(spec)
    for path, value in config.overrides.items():
        if path == "seed" or path.startswith("sweep"):
            raise SweepError(
                f"sweep configuration {config.name!r}: {path!r} cannot be overridden "
                "(student seeds go in sweep.seeds)"
            )
        try:
            tree = set_path(tree, path, value)
        except SweepError as e:
            raise SweepError(f"sweep configuration {config.name!r}: {e}") from None
    tree["name"] = f"{spec.name}.{config.name}"[:200]
    try:
        return ExperimentSpec.model_validate(tree)
    except ValidationError as e:
        raise SweepError(
            f"sweep configuration {config.name!r} ({_overrides_text(config.overrides)}) is not a "
            f"valid spec:\n{format_validation_error(e)}"
        ) from None


def _overrides_text(overrides: Mapping[str, Any]) -> str:
    return ", ".join(f"{p}={json.dumps(v)}" for p, v in overrides.items()) or "no overrides"


def check_sweep(spec: ExperimentSpec, sweep: SweepSpec) -> None:
    """Raise SweepError unless every path of `sweep` exists in `spec` and every child is a
    valid spec."""
    tree = _base_tree(spec)
    for path in sweep.grid:
        try:
            get_path(tree, path)
        except SweepError as e:
            raise SweepError(f"grid: {e}") from None
    for config in configurations(sweep):
        configuration_spec(spec, config)


# ---------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class ChildRun:
    """One configuration at one seed: the spec it runs (seed set, no sweep) and the keys of the
    shared stages it reads (None where it trains no such stage)."""

    configuration: str
    seed: int
    spec: ExperimentSpec
    teacher_key: str | None
    baseline_key: str | None
    distill_key: str


@dataclass
class SharedStage:
    """A stage planned once: its kind, key, the spec that trains it, and who uses it."""

    kind: str
    key: str
    spec: ExperimentSpec
    seed: int
    used_by: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class SweepPlan:
    name: str
    seeds: list[int]
    configurations: list[Configuration]
    children: list[ChildRun]
    teachers: dict[str, SharedStage]
    baselines: dict[str, SharedStage]
    #: ``sweep.compute_matched_baseline``: a compute-matched baseline per child (`matched`).
    compute_matched: bool = False

    @property
    def matched(self) -> list[ChildRun]:
        """The children that get a compute-matched baseline (a `student` stage of their
        baseline's spec, trained as long as their distillation): each with a baseline, when
        `compute_matched`."""
        if not self.compute_matched:
            return []
        return [c for c in self.children if c.baseline_key is not None]

    def stage_counts(self) -> dict[str, tuple[int, int]]:
        """kind -> (stages planned, stages the children would train without sharing); with
        compute-matched baselines also ``matched``: their `student` stages (never shared)."""
        n = len(self.children)
        counts = {
            "teacher": (len(self.teachers), sum(c.teacher_key is not None for c in self.children)),
            "student": (
                len(self.baselines),
                sum(c.baseline_key is not None for c in self.children),
            ),
            "distill": (len({c.distill_key for c in self.children}), n),
        }
        if self.compute_matched:
            counts["matched"] = (len(self.matched), len(self.matched))
        return counts

    def as_dict(self) -> dict[str, Any]:
        """JSON-able expansion and sharing (what dry runs print and the API returns)."""
        return {
            "name": self.name,
            "seeds": self.seeds,
            "configurations": [
                {"name": c.name, "overrides": c.overrides} for c in self.configurations
            ],
            "children": [
                {
                    "configuration": c.configuration,
                    "seed": c.seed,
                    "teacher": c.teacher_key,
                    "baseline": c.baseline_key,
                    "distill": c.distill_key,
                }
                for c in self.children
            ],
            "shared": {
                kind: [
                    {"key": s.key, "seed": s.seed, "used_by": [list(u) for u in s.used_by]}
                    for s in stages.values()
                ]
                for kind, stages in (("teacher", self.teachers), ("student", self.baselines))
            },
            "compute_matched_baseline": self.compute_matched,
            "matched": [
                {"configuration": c.configuration, "seed": c.seed, "baseline": c.baseline_key}
                for c in self.matched
            ],
            "stage_counts": {k: list(v) for k, v in self.stage_counts().items()},
        }


def teacher_identity(spec: ExperimentSpec, teacher_seed: int) -> dict[str, Any] | None:
    """What determines the teacher stage (None when it is not trained: a checkpoint or no
    teacher stage)."""
    if "teacher" not in spec.stages or spec.teacher.model.checkpoint is not None:
        return None
    dump = spec.model_dump(mode="json")
    return {
        "stage": "teacher",
        "data": dump["data"],
        "teacher": dump["teacher"],
        "seed": teacher_seed,
    }


def baseline_identity(spec: ExperimentSpec) -> dict[str, Any] | None:
    """What determines the student baseline (None when the spec trains none)."""
    if "student" not in spec.stages:
        return None
    dump = spec.model_dump(mode="json")
    ident = {
        "stage": "student",
        "data": dump["data"],
        "student": dump["student"],
        "seed": spec.seed,
    }
    if spec.student.model.width == "auto":
        ident["profiling"] = dump["profiling"]
    return ident


def plan_sweep(spec: ExperimentSpec) -> SweepPlan:
    """Expand `spec`'s sweep (a spec without one is one child, "base", at its own seed)."""
    from distillery.spec import SweepSpec

    sweep = spec.sweep or SweepSpec(seeds=[spec.seed])
    configs = configurations(sweep)
    plan = SweepPlan(
        spec.name, list(sweep.seeds), configs, [], {}, {}, sweep.compute_matched_baseline
    )
    for config in configs:
        base = configuration_spec(spec, config)
        for seed in sweep.seeds:
            child = base.model_copy(update={"seed": seed, "name": f"{base.name}.s{seed}"[:200]})
            t_ident = teacher_identity(base, spec.seed)
            b_ident = baseline_identity(child)
            t_key = content_hash(t_ident) if t_ident else None
            b_key = content_hash(b_ident) if b_ident else None
            dump = child.model_dump(mode="json")
            d_key = content_hash(
                {"stage": "distill", **{k: v for k, v in dump.items() if k != "name"}}
            )
            if t_key is not None:
                shared = plan.teachers.get(t_key)
                if shared is None:
                    t_spec = base.model_copy(
                        update={"stages": ["teacher"], "name": f"{spec.name}.teacher-{t_key[:8]}"}
                    )
                    shared = plan.teachers[t_key] = SharedStage("teacher", t_key, t_spec, spec.seed)
                shared.used_by.append((config.name, seed))
            if b_key is not None:
                shared = plan.baselines.get(b_key)
                if shared is None:
                    b_spec = child.model_copy(
                        update={"stages": ["student"], "name": f"{spec.name}.baseline-{b_key[:8]}"}
                    )
                    shared = plan.baselines[b_key] = SharedStage("student", b_key, b_spec, seed)
                shared.used_by.append((config.name, seed))
            plan.children.append(ChildRun(config.name, seed, child, t_key, b_key, d_key))
    return plan


def describe_plan(plan: SweepPlan) -> str:
    """The expansion and sharing as text (the dry runs print this)."""
    n_cfg, n_seed = len(plan.configurations), len(plan.seeds)
    lines = [
        f"sweep {plan.name}: {n_cfg} configuration{'s' * (n_cfg != 1)} x {n_seed} "
        f"seed{'s' * (n_seed != 1)} ({', '.join(map(str, plan.seeds))}) = {len(plan.children)} "
        "children",
    ]
    for c in plan.configurations:
        lines.append(f"  {c.name}: {_overrides_text(c.overrides)}")
    lines.append("shared stages (planned once, by content hash):")
    for kind, stages in (("teacher", plan.teachers), ("student baseline", plan.baselines)):
        for s in stages.values():
            users = sorted({c for c, _ in s.used_by})
            lines.append(
                f"  {kind} {s.key} (seed {s.seed}): used by {len(s.used_by)} children "
                f"({', '.join(users)})"
            )
    if plan.matched:
        lines.append(
            f"compute-matched baselines: {len(plan.matched)}, one per child: a student trained "
            "alone as long as the child's distillation took, after it (`distillery run` trains "
            "those of equal epochs once)"
        )
    counts = plan.stage_counts()
    lines.append(
        "stages to train: "
        + ", ".join(f"{k} {planned} (of {unshared})" for k, (planned, unshared) in counts.items())
    )
    return "\n".join(lines)
