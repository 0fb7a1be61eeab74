"""The worker's second look at what a spec may touch: a stage whose spec reaches outside the
allowed folders (or into another user's checkpoint) fails before it reads or writes anything."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from distillery.db import Artifact, Experiment, ExperimentShare, Stage, StageStatus, User
from services.celery_app import make_celery
from services.worker.runtime import execute_stage


def _spec(root: str, **extra) -> dict:
    return {
        "name": "reach",
        "data": {
            "train": [{"format": "cityscapes", "root": root}],
            "val": [{"format": "cityscapes", "root": root}],
            "image_size": [32, 64],
            "synthetic": {"num_train": 2, "num_val": 1, "image_size": [32, 64]},
        },
        "teacher": {"model": {"width": 4, "depth": 2}, "train": {"epochs": 1}},
        "student": {"model": {"width": 4, "depth": 2}, "train": {"epochs": 1}},
        "tracking": {"mode": "disabled"},
        **extra,
    }


def _stage(session_factory, settings, spec: dict, owner: str = "alice") -> int:
    with session_factory.begin() as s:
        user = User(name=owner)
        s.add(user)
        s.flush()
        exp = Experiment(name="reach", spec=spec, owner_id=user.id)
        exp.stages.append(Stage(name="teacher", position=0, queue=settings.gpu_queue))
        s.add(exp)
        s.flush()
        return exp.stages[0].id


def test_a_root_outside_the_allowed_folders_fails_the_stage_and_writes_nothing(
    settings, session_factory, tmp_path
):
    outside = tmp_path.parent / f"{tmp_path.name}-outside" / "syn"
    settings = settings.model_copy(update={"allowed_data_roots": [tmp_path / "allowed"]})
    stage_id = _stage(session_factory, settings, _spec(str(outside)))
    assert execute_stage(make_celery(settings), settings, stage_id, "host:1") is None
    with session_factory() as s:
        stage = s.get(Stage, stage_id)
        assert stage.status == StageStatus.failed
        assert "data.train.0.root: synthetic output folder" in stage.error
        assert "is not allowed here; allowed folders:" in stage.error
    assert not outside.parent.exists()  # nothing was generated outside


def test_a_symlink_out_of_an_allowed_folder_is_caught_on_the_worker(
    settings, session_factory, tmp_path
):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "link").symlink_to("/etc")
    settings = settings.model_copy(update={"allowed_data_roots": [allowed]})
    stage_id = _stage(session_factory, settings, _spec(str(allowed / "link" / "syn")))
    execute_stage(make_celery(settings), settings, stage_id, "host:1")
    with session_factory() as s:
        stage = s.get(Stage, stage_id)
        assert stage.status == StageStatus.failed and "data.train.0.root" in stage.error


def _bobs_teacher(session_factory) -> tuple[int, str]:
    with session_factory.begin() as s:
        bob = User(name="bob")
        s.add(bob)
        s.flush()
        old = Experiment(name="bobs", spec={}, owner_id=bob.id, status=StageStatus.succeeded)
        s.add(old)
        s.flush()
        key = f"artifacts/{old.id}/teacher/model.pt"
        s.add(Artifact(experiment_id=old.id, stage="teacher", kind="model", key=key))
        return bob.id, key


def test_another_users_checkpoint_fails_the_stage(settings, session_factory, tmp_path):
    _, key = _bobs_teacher(session_factory)
    spec = _spec(str(tmp_path / "syn"), stages=["student"])
    spec["teacher"]["model"]["checkpoint"] = key
    stage_id = _stage(session_factory, settings, spec)
    execute_stage(make_celery(settings), settings, stage_id, "host:1")
    with session_factory() as s:
        stage = s.get(Stage, stage_id)
        assert stage.status == StageStatus.failed
        assert "teacher.model.checkpoint: artifact" in stage.error
        assert "belongs to another user's experiment" in stage.error
    assert not Path(tmp_path / "syn").exists()


def test_a_share_taken_back_before_the_stage_starts_fails_it(settings, session_factory, tmp_path):
    """Shared at submission, taken back while queued: the worker's own check refuses."""
    _, key = _bobs_teacher(session_factory)
    spec = _spec(str(tmp_path / "syn"), stages=["student"])
    spec["teacher"]["model"]["checkpoint"] = key
    stage_id = _stage(session_factory, settings, spec)
    with session_factory.begin() as s:
        alice = s.scalar(select(User).where(User.name == "alice"))
        share = ExperimentShare(experiment_id=key.split("/")[1], user_id=alice.id)
        s.add(share)
    with session_factory.begin() as s:  # bob takes it back before a worker takes the stage
        s.delete(s.get(ExperimentShare, (key.split("/")[1], alice.id)))
    execute_stage(make_celery(settings), settings, stage_id, "host:1")
    with session_factory() as s:
        stage = s.get(Stage, stage_id)
        assert stage.status == StageStatus.failed and "not shared with you" in stage.error
    assert not Path(tmp_path / "syn").exists()
