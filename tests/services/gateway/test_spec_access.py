"""What a spec may touch on the platform: folders only inside the allowed data roots, and
checkpoints only from the submitter's own experiments; refused at submission, nothing stored."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from distillery.db import Experiment
from services.gateway.main import create_app

from .helpers import auth, spec_dict
from .test_experiments import own_teacher_model


def count(session_factory) -> int:
    with session_factory() as s:
        return s.scalar(select(func.count()).select_from(Experiment)) or 0


@pytest.mark.parametrize("root", ["/etc", "/data/../etc", "relative/folder", "/database", "/"])
def test_roots_outside_the_allowed_folders_are_422(
    as_user, session_factory, root, celery_messages, queues
):
    spec = spec_dict("where")
    spec["data"]["val"] = [{"format": "cityscapes", "root": root}]
    r = as_user("alice").post("/experiments", json=spec)
    assert r.status_code == 422, r.text
    (err,) = r.json()["detail"]
    assert err["field"] == "data.val.0.root" and err["type"] == "access_denied"
    assert "is not allowed here; allowed folders: /data, " in err["msg"]
    assert count(session_factory) == 0 and celery_messages(queues.gpu) == []


def test_synthetic_output_only_inside_the_allowed_folders(as_user, session_factory, tmp_path):
    spec = spec_dict(
        "syn",
        data={
            "train": [{"format": "cityscapes", "root": "/tmp/elsewhere/syn"}],
            "val": [{"format": "cityscapes", "root": str(tmp_path / "syn")}],
            "image_size": [64, 128],
            "synthetic": {"num_train": 2, "num_val": 1},
        },
    )
    r = as_user("alice").post("/experiments", json=spec)
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["field"] == "data.train.0.root" and "synthetic output folder" in err["msg"]
    assert count(session_factory) == 0


def test_no_allowed_folders_means_registered_datasets_only(settings, tokens, session_factory):
    with TestClient(create_app(settings.model_copy(update={"allowed_data_roots": []}))) as c:
        r = c.post("/experiments", json=spec_dict("x"), headers=auth(tokens["alice"]))
    assert r.status_code == 422
    msgs = [e["msg"] for e in r.json()["detail"]]
    assert all("DISTILLERY_ALLOWED_DATA_ROOTS is empty" in m for m in msgs) and len(msgs) == 2
    assert count(session_factory) == 0


def test_checkpoints_only_from_your_own_experiments(as_user, session_factory):
    alices = own_teacher_model(session_factory, "alice")
    for key, says in [
        (alices, "belongs to another user's experiment"),
        ("artifacts/nope/teacher/model.pt", "no artifact"),
        ("/etc/passwd", "checkpoint file '/etc/passwd' is not allowed here"),
        ("../../etc/passwd", "no artifact"),
    ]:
        spec = spec_dict("steal")
        spec["teacher"]["model"]["checkpoint"] = key
        r = as_user("bob").post("/experiments", json=spec)
        assert r.status_code == 422, r.text
        (err,) = r.json()["detail"]
        assert err["field"] == "teacher.model.checkpoint" and says in err["msg"], err
    before = count(session_factory)
    spec = spec_dict("mine")
    spec["teacher"]["model"]["checkpoint"] = alices
    assert as_user("alice").post("/experiments", json=spec).status_code == 201
    assert as_user("root").post("/experiments", json=spec).status_code == 201  # an admin may
    assert count(session_factory) == before + 2


def test_a_shared_experiments_checkpoint_may_be_used_until_the_share_is_taken_back(
    as_user, session_factory
):
    alices = own_teacher_model(session_factory, "alice")
    experiment_id = alices.split("/")[1]
    shares = f"/experiments/{experiment_id}/shares"
    spec = spec_dict("borrow")
    spec["teacher"]["model"]["checkpoint"] = alices

    r = as_user("bob").post("/experiments", json=spec)
    assert r.status_code == 422 and "not shared with you" in r.json()["detail"][0]["msg"]
    before = count(session_factory)
    # Only the owner (or an admin) shares, and only with a user who exists.
    assert as_user("bob").put(f"{shares}/bob").status_code == 403
    r = as_user("alice").put(f"{shares}/nobody")
    assert r.status_code == 404 and "no user 'nobody'" in r.json()["detail"]
    assert as_user("alice").put("/experiments/nope/shares/bob").status_code == 404
    assert as_user("bob").get(shares).json() == {"experiment_id": experiment_id, "users": []}

    for _ in range(2):  # sharing twice is sharing once
        r = as_user("alice").put(f"{shares}/bob")
        assert r.status_code == 200 and r.json()["users"] == ["bob"]
    assert as_user("bob").post("/experiments", json=spec).status_code == 201
    assert count(session_factory) == before + 1

    assert as_user("bob").delete(f"{shares}/bob").status_code == 403
    r = as_user("root").delete(f"{shares}/bob")  # an admin may take it back too
    assert r.status_code == 200 and r.json()["users"] == []
    r = as_user("bob").post("/experiments", json=spec)
    assert r.status_code == 422 and "not shared with you" in r.json()["detail"][0]["msg"]
    assert count(session_factory) == before + 1
