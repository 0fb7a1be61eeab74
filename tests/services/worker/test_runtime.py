"""What a worker process builds for a stage: dataset resolution through the cache, and a stage
the runner cannot even load is failed instead of being re-sent forever."""

from __future__ import annotations

import pytest

from distillery.db import Dataset, Experiment, Stage, StageStatus
from distillery.s3 import make_storage
from distillery.spec import DatasetRef
from services.celery_app import make_celery
from services.worker.runtime import dataset_resolver, execute_stage


def test_platform_datasets_come_from_the_bucket_through_the_cache(settings, session_factory):
    storage = make_storage(settings, settings.datasets_bucket)
    storage.put_bytes("datasets/abc/leftImg8bit/train/x.png", b"png")
    with session_factory.begin() as s:
        s.add(
            Dataset(id="abc", name="d", format="cityscapes", prefix="datasets/abc", status="ready")
        )
        s.add(
            Dataset(
                id="bad",
                name="b",
                format="cityscapes",
                prefix="datasets/bad",
                status="invalid",
                error="no gtFine",
            )
        )
    resolve = dataset_resolver(settings, session_factory)
    root = resolve(DatasetRef(format="cityscapes", dataset_id="abc"))
    assert root.is_relative_to(settings.cache_dir)
    assert (root / "leftImg8bit/train/x.png").read_bytes() == b"png"
    assert resolve(DatasetRef(format="cityscapes", root="/some/folder")).as_posix() == (
        "/some/folder"
    )
    with pytest.raises(ValueError, match="dataset 'bad' is invalid, not ready: no gtFine"):
        resolve(DatasetRef(format="cityscapes", dataset_id="bad"))
    with pytest.raises(ValueError, match="dataset_id 'nope' does not exist"):
        resolve(DatasetRef(format="cityscapes", dataset_id="nope"))


def test_a_stage_the_runner_cannot_load_fails_with_its_error(settings, session_factory):
    with session_factory.begin() as s:
        exp = Experiment(name="broken", spec={"name": "broken"})  # no data: not a valid spec
        exp.stages.append(Stage(name="teacher", position=0, queue=settings.gpu_queue))
        exp.stages.append(Stage(name="student", position=1, queue=settings.gpu_queue))
        s.add(exp)
        s.flush()
        first, second, exp_id = exp.stages[0].id, exp.stages[1].id, exp.id
    assert execute_stage(make_celery(settings), settings, first, "host:1") is None
    with session_factory() as s:
        assert s.get(Stage, first).status == StageStatus.failed
        assert "data" in s.get(Stage, first).error
        assert s.get(Stage, second).status == StageStatus.cancelled
        assert s.get(Experiment, exp_id).status == StageStatus.failed


def test_a_duplicate_message_for_a_finished_stage_runs_and_sends_nothing(
    settings, session_factory, celery_messages
):
    with session_factory.begin() as s:
        exp = Experiment(name="dup", spec={"name": "dup"}, status=StageStatus.running)
        exp.stages.append(
            Stage(
                name="teacher",
                position=0,
                queue=settings.gpu_queue,
                status=StageStatus.succeeded,
                worker_id="other:1",
                attempts=1,
            )
        )
        exp.stages.append(Stage(name="student", position=1, queue=settings.gpu_queue))
        s.add(exp)
        s.flush()
        first, second = exp.stages[0].id, exp.stages[1].id
    assert execute_stage(make_celery(settings), settings, first, "me:2") is None
    assert celery_messages(settings.gpu_queue) == []  # "other:1" sends the student stage
    with session_factory() as s:
        assert s.get(Stage, first).attempts == 1
        assert s.get(Stage, second).status == StageStatus.queued
