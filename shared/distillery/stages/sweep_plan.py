"""A sweep on the shared queue: its parent and members as experiments, in one transaction.

`distillery.sweeps.plan_sweep` expands the spec and finds the stages children share (by content
hash); here each part becomes an experiment whose `parent_id` is the sweep's:

- a shared teacher (``sweep.role: teacher``): one experiment training the teacher, once for
  every child that uses it;
- a student baseline (``baseline``): one per seed (and student), for every configuration;
- a child (``child``, a configuration at a seed): its `distill` stage (and `profile` for the
  first child of each student architecture, as `distillery run` does), which needs
  (`stage_needs`) the stage of its shared teacher: it waits for it, reads its model, and fails
  with it;
- with ``sweep.compute_matched_baseline``, a compute-matched baseline per child (``matched``,
  a configuration at a seed): its baseline's spec, whose `student` stage needs the child's
  `distill` and the baseline's `student` and trains as long as the distillation did (epochs
  from their recorded training times at run time, `StudentStage.prepare`);
- the parent (``sweep``): the sweep-level kinds (`plan.sweep_kinds`: `compare`), which need
  every member's stages and run once they have all ended, whatever their outcome.

Every member whose first stage waits for nothing is sent at once (its stage inserted as sent;
`Inserted.to_send`); the others are sent by the worker that ends what they need
(`lifecycle.ready_after`), or by the reconciler.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from distillery.spec import ExperimentSpec
from distillery.stages import lifecycle
from distillery.stages.plan import (
    InsertedExperiment,
    insert_experiment,
    planned_kinds,
    sweep_kinds,
)
from distillery.stages.sweep_results import profile_key
from distillery.sweeps import SweepPlan, plan_sweep


@dataclass
class InsertedSweep:
    """What `insert_sweep` wrote: the parent, its members, and the (stage id, queue) of each
    stage to send once committed."""

    plan: SweepPlan
    parent: InsertedExperiment
    members: list[InsertedExperiment] = field(default_factory=list)
    to_send: list[tuple[int, str]] = field(default_factory=list)


def _stage_id(inserted: InsertedExperiment, name: str) -> int:
    return next(s["id"] for s in inserted.stages if s["name"] == name)


def insert_sweep(
    session: Session,
    spec: ExperimentSpec,
    *,
    owner_id: int | None = None,
    queues: dict[str, str] | None = None,
    idempotency_key: str | None = None,
) -> InsertedSweep:
    """Insert the sweep of `spec` (parent, shared teachers, baselines, children, and what waits
    for what) in the session's transaction; the caller commits, then sends `to_send`."""
    plan = plan_sweep(spec)
    parent = insert_experiment(
        session,
        spec,
        owner_id=owner_id,
        queues=queues,
        idempotency_key=idempotency_key,
        kinds=sweep_kinds(spec),
        sweep={"role": "sweep", "plan": plan.as_dict()},
        send_first=False,
    )
    out = InsertedSweep(plan, parent)
    parent_id = parent.experiment["id"]

    def member(
        part_spec: ExperimentSpec, info: dict[str, Any], needs: dict[str, list[int]]
    ) -> InsertedExperiment:
        """Insert one member; its stage of each kind in `needs` needs those stage ids."""
        kinds = planned_kinds(part_spec)
        inserted = insert_experiment(
            session,
            part_spec,
            owner_id=owner_id,
            queues=queues,
            parent_id=parent_id,
            sweep=info,
            kinds=kinds,
            send_first=not needs.get(kinds[0].name),
        )
        for stage in inserted.stages:
            if needs.get(stage["name"]):
                lifecycle.add_needs(session, stage["id"], needs[stage["name"]])
        first = inserted.stages[0]
        if first["enqueued_at"] is not None:
            out.to_send.append((first["id"], first["queue"]))
        out.members.append(inserted)
        return inserted

    teacher_stage: dict[str, int] = {}
    for key, shared in plan.teachers.items():
        info = {"role": "teacher", "key": key, "seed": shared.seed, "used_by": shared.used_by}
        teacher_stage[key] = _stage_id(member(shared.spec, info, {}), "teacher")
    baseline_stage: dict[str, int] = {}
    for key, shared in plan.baselines.items():
        info = {"role": "baseline", "key": key, "seed": shared.seed, "used_by": shared.used_by}
        baseline_stage[key] = _stage_id(member(shared.spec, info, {}), "student")
    matched = {(c.configuration, c.seed) for c in plan.matched}
    profiled: set[str] = set()
    for child in plan.children:
        stages = ["distill"]
        p_key = profile_key(child.spec)
        if "profile" in spec.stages and p_key not in profiled:
            stages.append("profile")
            profiled.add(p_key)
        info = {
            "role": "child",
            "configuration": child.configuration,
            "seed": child.seed,
            "teacher": child.teacher_key,
            "baseline": child.baseline_key,
        }
        child_spec = child.spec.model_copy(update={"stages": stages})
        needs: dict[str, list[int]] = {}
        if child.teacher_key:
            teacher = teacher_stage[child.teacher_key]
            needs = {k.name: [teacher] for k in planned_kinds(child_spec) if "teacher" in k.reads}
        distill = _stage_id(member(child_spec, info, needs), "distill")
        if (child.configuration, child.seed) in matched and child.baseline_key:
            info = {
                "role": "matched",
                "configuration": child.configuration,
                "seed": child.seed,
                "baseline": child.baseline_key,
            }
            b_spec = plan.baselines[child.baseline_key].spec
            name = f"{plan.name}.matched-{child.configuration}.s{child.seed}"[:200]
            needs = {"student": [distill, baseline_stage[child.baseline_key]]}
            member(b_spec.model_copy(update={"name": name}), info, needs)

    session.flush()
    for stage in parent.stages:
        ids = [s["id"] for m in out.members for s in m.stages]
        lifecycle.add_needs(session, stage["id"], ids)
    session.flush()
    return out
