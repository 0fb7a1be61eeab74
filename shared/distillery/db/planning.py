"""A spec becomes an experiment and its ordered stages (for the gateway and `distillery run`)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from distillery.db.models import Experiment, Stage
from distillery.spec import ExperimentSpec


def create_experiment(
    session: Session,
    spec: ExperimentSpec,
    *,
    owner_id: int | None = None,
    gpu_queue: str = "gpu",
    profiler_queue: str = "profiler",
) -> Experiment:
    """Add an experiment with one queued stage per planned stage; `size` and `profile` go to the
    profiler queue (timings undisturbed by training), the rest to the GPU queue."""
    exp = Experiment(name=spec.name, spec=spec.model_dump(mode="json"), owner_id=owner_id)
    for position, name in enumerate(spec.planned_stages()):
        queue = profiler_queue if name in ("size", "profile") else gpu_queue
        exp.stages.append(Stage(name=name, position=position, queue=queue))
    session.add(exp)
    session.flush()
    return exp
