"""Tiny experiments for the worker tests: a spec that trains in seconds, submitted the way the
gateway does it (stored, then its first stage sent)."""

from __future__ import annotations

from pathlib import Path

from distillery.db import Experiment, Stage, StageStatus
from distillery.spec import ExperimentSpec
from distillery.stages.plan import insert_experiment
from services.celery_app import make_celery
from services.dispatch import CeleryDispatcher, enqueue_stage


def tiny_spec(
    name: str,
    data_root: Path,
    *,
    epochs: int,
    steps: int,
    stages: list[str],
    num_train: int = 8,
    num_val: int = 4,
    **train: object,
) -> ExperimentSpec:
    ref = {"format": "cityscapes", "root": str(data_root)}
    train = {"epochs": epochs, "batch_size": 2, "max_steps_per_epoch": steps, **train}
    return ExperimentSpec.model_validate(
        {
            "name": name,
            "data": {
                "train": [ref],
                "val": [ref],
                "image_size": [32, 64],
                "synthetic": {"num_train": num_train, "num_val": num_val, "image_size": [32, 64]},
            },
            "teacher": {"model": {"depth": 2, "width": 4}, "train": train},
            "student": {"model": {"depth": 2, "width": 2}, "train": train},
            "tracking": {"mode": "disabled"},
            "stages": stages,
        }
    )


def submit(session_factory, settings, spec: ExperimentSpec) -> tuple[str, list[int]]:
    """What the gateway does: store the experiment and its stages, send the first stage."""
    with session_factory() as s:
        inserted = insert_experiment(
            s,
            spec,
            queues={"gpu": settings.gpu_queue, "profiler": settings.profiler_queue},
            send_first=False,
        )
        s.commit()
        ids = [st["id"] for st in inserted.stages]
        assert enqueue_stage(s, CeleryDispatcher(make_celery(settings)), s.get(Stage, ids[0]))
        return inserted.experiment["id"], ids


def experiment_status(session_factory, exp_id: str) -> StageStatus:
    with session_factory() as s:
        return s.get(Experiment, exp_id).status
