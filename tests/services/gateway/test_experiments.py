"""`/experiments`: submission (validation, planning, enqueueing), reading, cancel, delete."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
from sqlalchemy import select

from distillery.db import Artifact, Dataset, Experiment, Metric, Stage, StageStatus
from distillery.db.models import utcnow
from distillery.stages import lifecycle
from services.celery_app import RUN_STAGE_TASK
from services.gateway.schemas import ExperimentDetail

from .helpers import spec_dict


def stages_of(session_factory, experiment_id: str) -> list[Stage]:
    with session_factory() as s:
        return list(
            s.scalars(
                select(Stage).where(Stage.experiment_id == experiment_id).order_by(Stage.position)
            )
        )


# ---------------------------------------------------------------------------------- submission


def test_submit_plans_stages_and_enqueues_only_the_first(
    as_user, session_factory, queues, celery_messages
):
    r = as_user("alice").post("/experiments", json=spec_dict("exp-a"))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "queued" and body["owner"] == "alice" and len(body["id"]) == 32
    assert [s["name"] for s in body["stages"]] == ["teacher", "student", "distill", "profile"]

    stages = stages_of(session_factory, body["id"])
    assert [(s.name, s.position) for s in stages] == [
        ("teacher", 0),
        ("student", 1),
        ("distill", 2),
        ("profile", 3),
    ]
    assert [s.queue for s in stages] == [queues.gpu, queues.gpu, queues.gpu, queues.profiler]
    assert all(s.status == StageStatus.queued for s in stages)
    # Only the first stage is on a queue; each finishing stage enqueues the next.
    assert stages[0].enqueued_at is not None
    assert [s.enqueued_at for s in stages[1:]] == [None, None, None]
    assert celery_messages(queues.gpu) == [(RUN_STAGE_TASK, [stages[0].id])]
    assert celery_messages(queues.profiler) == []

    with session_factory() as s:
        exp = s.get(Experiment, body["id"])
        assert exp.spec["name"] == "exp-a" and exp.spec["student"]["model"]["width"] == 4


def test_the_submit_answer_is_what_was_stored(as_user):
    """`POST /experiments` answers from the values it inserted (no read back): the list and
    the detail, read from Postgres, show the same experiment and stages."""
    from datetime import datetime

    def parsed(item: dict) -> dict:
        times = ("created_at", "updated_at")
        return {k: datetime.fromisoformat(v) if k in times else v for k, v in item.items()}

    alice = as_user("alice")
    created = alice.post("/experiments", json=spec_dict("stored")).json()
    assert created.pop("sweep") is None  # the answer's own field: a sweep's plan and members
    listed = alice.get("/experiments").json()["items"]
    assert [parsed(i) for i in listed if i["id"] == created["id"]] == [parsed(created)]
    detail = alice.get(f"/experiments/{created['id']}").json()
    assert parsed({k: detail[k] for k in created if k != "stages"}) == parsed(
        {k: v for k, v in created.items() if k != "stages"}
    )
    assert [{k: s[k] for k in created["stages"][0]} for s in detail["stages"]] == created["stages"]


def own_teacher_model(session_factory, owner: str = "alice") -> str:
    """The key of a teacher model that an earlier experiment of `owner` produced."""
    from distillery.db import User

    with session_factory.begin() as s:
        user = s.scalar(select(User).where(User.name == owner))
        old = Experiment(name="old", spec={}, owner_id=user.id, status=StageStatus.succeeded)
        s.add(old)
        s.flush()
        key = f"artifacts/{old.id}/teacher/model.pt"
        s.add(Artifact(experiment_id=old.id, stage="teacher", kind="model", key=key))
    return key


def test_teacher_checkpoint_skips_teacher_training(
    as_user, session_factory, queues, celery_messages
):
    spec = spec_dict("from-ckpt")
    spec["teacher"]["model"]["checkpoint"] = own_teacher_model(session_factory)
    r = as_user("alice").post("/experiments", json=spec)
    assert r.status_code == 201, r.text
    stages = stages_of(session_factory, r.json()["id"])
    assert [s.name for s in stages] == ["student", "distill", "profile"]
    assert [s.position for s in stages] == [0, 1, 2]
    assert celery_messages(queues.gpu) == [(RUN_STAGE_TASK, [stages[0].id])]


def test_profile_only_experiment_goes_to_the_profiler_queue(
    as_user, session_factory, queues, celery_messages
):
    r = as_user("bob").post("/experiments", json=spec_dict("prof", stages=["profile"]))
    assert r.status_code == 201, r.text
    (stage,) = stages_of(session_factory, r.json()["id"])
    assert stage.queue == queues.profiler
    assert celery_messages(queues.profiler) == [(RUN_STAGE_TASK, [stage.id])]
    assert celery_messages(queues.gpu) == []


def test_nothing_to_run_is_422(as_user):
    spec = spec_dict("nothing", stages=["teacher"])
    spec["teacher"]["model"]["checkpoint"] = "teacher.pt"
    r = as_user("alice").post("/experiments", json=spec)
    assert r.status_code == 422
    assert "stages" in [e["field"] for e in r.json()["detail"]]


def test_a_sweep_path_that_does_not_exist_is_422_naming_it(as_user, queues, celery_messages):
    spec = spec_dict("sw", sweep={"seeds": [0, 1], "grid": {"distillation.losses.4.weight": [1]}})
    r = as_user("alice").post("/experiments", json=spec)
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["field"] == "sweep" and "'distillation.losses.4.weight' does not exist" in err["msg"]
    spec["sweep"] = {"configurations": [{"name": "x", "overrides": {"student.nope": 1}}]}
    r = as_user("alice").post("/experiments", json=spec)
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["field"] == "sweep" and "'student.nope' does not exist" in err["msg"]
    assert "configuration 'x'" in err["msg"]
    assert celery_messages(queues.gpu) == []  # nothing was queued


def _sweep_spec() -> dict:
    """2 configurations x 2 seeds: one teacher, two baselines (one per seed), four children."""
    return spec_dict(
        "sw",
        stages=["teacher", "student", "distill"],
        sweep={"seeds": [0, 1], "grid": {"distillation.losses.1.temperature": [1, 4]}},
    )


def test_a_sweep_is_one_parent_and_its_members_with_shared_stages_planned_once(
    as_user, session_factory, queues, celery_messages
):
    r = as_user("alice").post("/experiments", json=_sweep_spec())
    assert r.status_code == 201, r.text
    body = r.json()
    sweep = body["sweep"]
    assert body["status"] == "queued" and sweep["role"] == "sweep"
    assert [s["name"] for s in body["stages"]] == ["compare"]
    assert body["stages"][0]["queue"] == queues.profiler
    assert sweep["plan"]["stage_counts"] == {
        "teacher": [1, 4],
        "student": [2, 4],
        "distill": [4, 4],
    }
    roles = sorted((m["role"], m["configuration"], m["seed"]) for m in sweep["members"])
    assert roles == [
        ("baseline", None, 0),
        ("baseline", None, 1),
        ("child", "temperature-1", 0),
        ("child", "temperature-1", 1),
        ("child", "temperature-4", 0),
        ("child", "temperature-4", 1),
        ("teacher", None, 0),
    ]
    # the rows: one teacher stage, two student stages, four distill stages in all
    with session_factory() as s:
        members = s.scalars(select(Experiment).where(Experiment.parent_id == body["id"])).all()
        names = [st.name for m in members for st in m.stages]
        children = [m for m in members if m.sweep["role"] == "child"]
        teacher = next(m for m in members if m.sweep["role"] == "teacher").stages[0]
        needs = {
            st.id: [n.id for n in lifecycle.needed_stages(s, st.id)]
            for m in children
            for st in m.stages
        }
        compare = s.get(Experiment, body["id"]).stages[0]
        compare_needs = {n.id for n in lifecycle.needed_stages(s, compare.id)}
    assert sorted(names) == ["distill"] * 4 + ["student"] * 2 + ["teacher"]
    assert all(v == [teacher.id] for v in needs.values()) and len(needs) == 4
    assert compare_needs == {st.id for m in members for st in m.stages}
    # sent now: the teacher and the baselines; the children wait for the teacher
    sent = sorted(args[0] for _task, args in celery_messages(queues.gpu))
    expected = sorted(m.stages[0].id for m in members if m.sweep["role"] != "child")
    assert sent == expected
    assert celery_messages(queues.profiler) == []

    # the parent's detail: its members and their counts; a member points at its parent
    detail = as_user("alice").get(f"/experiments/{body['id']}").json()
    assert detail["sweep"]["counts"] == {"queued": 7}
    child = as_user("alice").get(f"/experiments/{children[0].id}").json()
    assert child["parent_id"] == body["id"] and child["sweep"]["role"] == "child"
    # the list: the parent and its 7 members; top_level=true the parent alone
    every = as_user("alice").get("/experiments").json()
    assert every["total"] == 8 and body["id"] in {e["id"] for e in every["items"]}
    top = as_user("alice").get("/experiments", params={"top_level": True}).json()
    assert top["total"] == 1 and [e["id"] for e in top["items"]] == [body["id"]]
    past = as_user("alice").get("/experiments", params={"top_level": True, "offset": 5}).json()
    assert past["total"] == 1 and past["items"] == []


def test_a_sweep_with_compute_matched_baselines_plans_one_per_child_and_sends_none(
    as_user, session_factory, queues, celery_messages
):
    spec = _sweep_spec()
    spec["sweep"]["compute_matched_baseline"] = True
    r = as_user("alice").post("/experiments", json=spec)
    assert r.status_code == 201, r.text
    members = r.json()["sweep"]["members"]
    matched = sorted((m["configuration"], m["seed"]) for m in members if m["role"] == "matched")
    assert matched == [(f"temperature-{t}", seed) for t in (1, 4) for seed in (0, 1)]
    plan = r.json()["sweep"]["plan"]  # listed and counted in the plan, as the other parts
    assert sorted((m["configuration"], m["seed"]) for m in plan["matched"]) == matched
    assert plan["stage_counts"]["matched"] == [4, 4]
    assert all(
        [st["name"] for st in m["stages"]] == ["student"] for m in members if m["role"] == "matched"
    )
    detail = as_user("alice").get(f"/experiments/{r.json()['id']}").json()
    assert detail["sweep"]["counts"] == {"queued": 11}
    with session_factory() as s:
        ids = {m["id"] for m in members if m["role"] == "matched"}
        stages = [st.id for e in ids for st in s.get(Experiment, e).stages]
    sent = {args[0] for _task, args in celery_messages(queues.gpu)}
    assert len(sent) == 3 and not sent & set(stages)  # they wait for their child and baseline


def test_cancel_and_delete_of_a_sweep_apply_to_its_members(
    as_user, session_factory, queues, celery_messages
):
    alice = as_user("alice")
    parent = alice.post("/experiments", json=_sweep_spec()).json()
    member_ids = [m["id"] for m in parent["sweep"]["members"]]
    r = alice.post(f"/experiments/{parent['id']}/cancel")
    assert r.status_code == 200, r.text
    detail = alice.get(f"/experiments/{parent['id']}").json()
    assert detail["status"] == "cancelled"
    assert detail["sweep"]["counts"] == {"cancelled": 7}
    assert celery_messages(queues.gpu) == []  # their waiting messages were dropped
    # a retry queues every member again; the shared stages are sent, the children wait
    r = alice.post(f"/experiments/{parent['id']}/retry")
    assert r.status_code == 200, r.text
    detail = alice.get(f"/experiments/{parent['id']}").json()
    assert detail["status"] == "queued" and detail["sweep"]["counts"] == {"queued": 7}
    shared = {m["stages"][0]["name"] for m in detail["sweep"]["members"] if m["role"] != "child"}
    assert shared == {"teacher", "student"}
    assert len(celery_messages(queues.gpu)) == 3  # one teacher, two baselines
    assert alice.post(f"/experiments/{parent['id']}/cancel").status_code == 200
    assert alice.delete(f"/experiments/{parent['id']}").status_code == 204
    with session_factory() as s:
        left = s.scalars(select(Experiment.id).where(Experiment.id.in_(member_ids))).all()
        stages = s.scalars(select(Stage.id).where(Stage.experiment_id.in_(member_ids))).all()
    assert left == [] and stages == []


def test_a_sweep_cancel_that_deadlocks_with_a_worker_runs_again(
    as_user, session_factory, queues, celery_messages
):
    alice = as_user("alice")
    parent = alice.post("/experiments", json=_sweep_spec()).json()
    child = next(m for m in parent["sweep"]["members"] if m["role"] == "child")
    # A worker ending the child's stage: it holds the stage's row, then wants the parent's (to
    # roll the sweep up). The cancel holds the parent's row and then wants the child's stage.
    worker = session_factory()
    worker.execute(select(Stage).where(Stage.experiment_id == child["id"]).with_for_update()).all()
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(alice.post, f"/experiments/{parent['id']}/cancel")
        time.sleep(0.5)  # the cancel now waits for the child's stage
        # Postgres breaks the cycle by aborting the first waiter (the cancel) after its
        # deadlock_timeout (1 s); the worker gets the parent and commits.
        worker.execute(
            select(Experiment).where(Experiment.id == parent["id"]).with_for_update()
        ).all()
        worker.commit()
        r = answer.result(timeout=60)
    worker.close()
    assert r.status_code == 200, r.text
    detail = alice.get(f"/experiments/{parent['id']}").json()
    assert detail["status"] == "cancelled" and detail["sweep"]["counts"] == {"cancelled": 7}


def test_invalid_spec_is_422_naming_each_bad_field(as_user, queues, celery_messages):
    spec = spec_dict("bad")
    spec["teacher"]["train"]["lr"] = -1
    spec["student"]["model"]["widht"] = 8  # typo: unknown fields are errors
    spec["distillation"] = {"losses": [{"kind": "logit_kd", "temperature": 0}]}
    spec["data"]["train"][0]["format"] = "kitti"
    spec["teacher"]["model"]["width"] = 0  # int or "auto": both branches fail
    r = as_user("alice").post("/experiments", json=spec)
    assert r.status_code == 422
    errors = r.json()["detail"]
    fields = {e["field"] for e in errors}
    # The spec's own paths: no union branch names (`logit_kd`, `constrained-int`, `literal[...]`).
    assert {
        "teacher.train.lr",
        "student.model.widht",
        "data.train.0.format",
        "distillation.losses.0.temperature",
        "teacher.model.width",
    } <= fields, fields
    assert not [f for f in fields if "constrained" in f or "[" in f], fields
    for e in errors:  # FastAPI's own shape, with a readable loc path
        assert e["loc"][0] == "body" and e["msg"] and e["type"]
    assert celery_messages(queues.gpu) == []


def test_whole_spec_errors_name_the_field_in_the_message(as_user):
    r = as_user("alice").post(
        "/experiments",
        json=spec_dict(
            "odd",
            data={
                "train": [{"format": "cityscapes", "root": "x"}],
                "val": [{"format": "cityscapes", "root": "x"}],
                "image_size": [62, 128],
            },
        ),
    )
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert "data.image_size" in err["msg"] and err["field"] == "data.image_size"
    assert "input" not in err  # the whole spec is not echoed back


def test_missing_and_malformed_bodies_are_422(as_user):
    r = as_user("alice").post("/experiments", json={"name": "no-data"})
    assert r.status_code == 422 and [e["field"] for e in r.json()["detail"]] == ["data"]
    r = as_user("alice").post(
        "/experiments", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422


def test_dataset_ids_must_name_ready_datasets(as_user, session_factory, tokens):
    with session_factory() as s:
        s.add_all(
            [
                Dataset(
                    id="d" * 32, name="ready-cs", format="cityscapes", prefix="p1", status="ready"
                ),
                Dataset(
                    id="c" * 32, name="busy", format="cityscapes", prefix="p2", status="checking"
                ),
                Dataset(id="b" * 32, name="bdd", format="bdd100k", prefix="p3", status="ready"),
            ]
        )
        s.commit()
    spec = spec_dict("refs")
    spec["data"]["train"] = [
        {"format": "cityscapes", "dataset_id": "d" * 32},
        {"format": "cityscapes", "dataset_id": "nope"},
        {"format": "cityscapes", "dataset_id": "c" * 32},
    ]
    spec["data"]["val"] = [{"format": "cityscapes", "dataset_id": "b" * 32}]
    r = as_user("alice").post("/experiments", json=spec)
    assert r.status_code == 422
    by_field = {e["field"]: e["msg"] for e in r.json()["detail"]}
    assert set(by_field) == {
        "data.train.1.dataset_id",
        "data.train.2.dataset_id",
        "data.val.0.format",
    }
    assert "no dataset 'nope'" in by_field["data.train.1.dataset_id"]
    assert "checking" in by_field["data.train.2.dataset_id"]

    spec["data"]["train"] = [{"format": "cityscapes", "dataset_id": "d" * 32}]
    spec["data"]["val"] = [{"format": "bdd100k", "dataset_id": "b" * 32}]
    assert as_user("alice").post("/experiments", json=spec).status_code == 201


# ------------------------------------------------------------------------------------- reading


def test_list_filters_paginates_newest_first(as_user, session_factory):
    ids = []
    for i in range(5):
        ids.append(as_user("alice").post("/experiments", json=spec_dict(f"a{i}")).json()["id"])
    for i in range(2):
        ids.append(as_user("bob").post("/experiments", json=spec_dict(f"b{i}")).json()["id"])
    # Spread creation times so "newest first" is unambiguous, and finish two of them.
    with session_factory() as s:
        base = utcnow()
        for k, exp_id in enumerate(ids):
            exp = s.get(Experiment, exp_id)
            exp.created_at = base - timedelta(minutes=len(ids) - k)
        s.get(Experiment, ids[1]).status = StageStatus.succeeded
        s.get(Experiment, ids[5]).status = StageStatus.failed
        s.commit()

    page = as_user("alice").get("/experiments").json()
    assert page["total"] == 7
    assert [e["id"] for e in page["items"]] == ids[::-1]

    page = as_user("alice").get("/experiments", params={"limit": 3, "offset": 2}).json()
    assert page["total"] == 7 and page["limit"] == 3 and page["offset"] == 2
    assert [e["id"] for e in page["items"]] == ids[::-1][2:5]

    page = as_user("bob").get("/experiments", params={"owner": "bob"}).json()
    assert page["total"] == 2 and {e["owner"] for e in page["items"]} == {"bob"}

    page = as_user("bob").get("/experiments", params={"status": "queued", "owner": "alice"}).json()
    assert page["total"] == 4 and ids[1] not in [e["id"] for e in page["items"]]

    page = as_user("bob").get("/experiments", params={"status": "failed"}).json()
    assert [e["id"] for e in page["items"]] == [ids[5]]

    r = as_user("bob").get("/experiments", params={"status": "exploded", "limit": 0})
    assert r.status_code == 422
    assert {e["field"] for e in r.json()["detail"]} == {"status", "limit"}


def test_detail_has_stages_metrics_results_artifacts_and_wandb(as_user, session_factory, settings):
    exp_id = as_user("alice").post("/experiments", json=spec_dict("detail")).json()["id"]
    from distillery.s3 import make_storage

    storage = make_storage(settings, settings.artifacts_bucket)
    key = f"artifacts/{exp_id}/teacher/results.json"
    storage.put_bytes(key, b'{"miou": 0.5}', "application/json")
    with session_factory() as s:
        teacher = s.scalar(select(Stage).where(Stage.experiment_id == exp_id, Stage.position == 0))
        teacher.status, teacher.worker_id = StageStatus.running, "gpu@node1"
        teacher.epoch, teacher.epochs, teacher.step, teacher.steps = 2, 2, 5, 10
        teacher.wandb = {"url": "https://wandb.example/run/1", "id": "run1"}
        s.add_all(
            [
                Metric(stage_id=teacher.id, epoch=1, step=10, values={"miou": 0.3, "loss": 1.2}),
                Metric(stage_id=teacher.id, epoch=2, step=20, values={"miou": 0.5, "loss": 0.9}),
                Artifact(experiment_id=exp_id, stage="teacher", kind="results", key=key, size=13),
            ]
        )
        exp = s.get(Experiment, exp_id)
        exp.status = StageStatus.running
        exp.results = {"rows": [{"stage": "teacher", "miou": 0.5}], "gap_closed": None}
        s.commit()

    d = as_user("bob").get(f"/experiments/{exp_id}").json()  # everyone reads everything
    # Built from rows, not through the model: exactly the model's fields and JSON.
    assert ExperimentDetail.model_validate(d).model_dump(mode="json") == d
    assert d["owner"] == "alice" and d["status"] == "running"
    assert d["spec"]["name"] == "detail"
    t = d["stages"][0]
    assert (t["name"], t["status"], t["worker_id"]) == ("teacher", "running", "gpu@node1")
    assert (t["epoch"], t["epochs"], t["step"], t["steps"]) == (2, 2, 5, 10)
    assert t["latest_metrics"]["epoch"] == 2 and t["latest_metrics"]["values"]["miou"] == 0.5
    assert t["wandb"]["url"] == "https://wandb.example/run/1"
    assert d["stages"][1]["latest_metrics"] is None
    assert d["results"]["rows"][0]["miou"] == 0.5
    (a,) = d["artifacts"]
    assert a["key"] == key and a["kind"] == "results"
    assert httpx.get(a["url"]).content == b'{"miou": 0.5}'  # a working presigned URL

    m = as_user("bob").get(f"/experiments/{exp_id}/metrics").json()
    assert [st["stage"] for st in m["stages"]] == ["teacher", "student", "distill", "profile"]
    assert [p["values"]["miou"] for p in m["stages"][0]["history"]] == [0.3, 0.5]
    assert m["stages"][1]["history"] == []

    assert as_user("bob").get("/experiments/0123").status_code == 404
    assert as_user("bob").get("/experiments/0123/metrics").status_code == 404


# ------------------------------------------------------------------------------ cancel, delete


def test_cancel_marks_queued_stages_cancelled_at_once(as_user, session_factory):
    exp_id = as_user("alice").post("/experiments", json=spec_dict("c1")).json()["id"]
    r = as_user("alice").post(f"/experiments/{exp_id}/cancel")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "cancelled" and body["cancel_requested"] is True
    assert {s["status"] for s in body["stages"]} == {"cancelled"}
    stages = stages_of(session_factory, exp_id)
    assert all(s.finished_at is not None for s in stages)
    # Cancelling a finished experiment is a conflict.
    assert as_user("alice").post(f"/experiments/{exp_id}/cancel").status_code == 409


def test_cancel_leaves_a_running_stage_to_its_worker(as_user, session_factory):
    exp_id = as_user("alice").post("/experiments", json=spec_dict("c2")).json()["id"]
    with session_factory() as s:
        first = s.scalar(select(Stage).where(Stage.experiment_id == exp_id, Stage.position == 0))
        first.status = StageStatus.running
        s.get(Experiment, exp_id).status = StageStatus.running
        s.commit()
    body = as_user("alice").post(f"/experiments/{exp_id}/cancel").json()
    assert body["status"] == "running" and body["cancel_requested"] is True
    assert [s["status"] for s in body["stages"]] == ["running"] + ["cancelled"] * 3
    # Not deletable while the stage still runs.
    assert as_user("alice").delete(f"/experiments/{exp_id}").status_code == 409


def test_delete_rules_and_artifacts_removed(as_user, session_factory, settings):
    from distillery.s3 import make_storage

    storage = make_storage(settings, settings.artifacts_bucket)
    keep_id = as_user("alice").post("/experiments", json=spec_dict("keep")).json()["id"]
    exp_id = as_user("alice").post("/experiments", json=spec_dict("gone")).json()["id"]
    for k in ("teacher/ckpt/epoch-1.pt", "teacher/results.json", "report.md"):
        storage.put_bytes(f"artifacts/{exp_id}/{k}", b"x")
    storage.put_bytes(f"artifacts/{keep_id}/teacher/results.json", b"y")

    assert as_user("alice").delete(f"/experiments/{exp_id}").status_code == 409  # queued
    assert as_user("alice").post(f"/experiments/{exp_id}/cancel").status_code == 200
    assert as_user("bob").delete(f"/experiments/{exp_id}").status_code == 403  # not the owner
    assert len(storage.list(f"artifacts/{exp_id}/")) == 3

    assert as_user("alice").delete(f"/experiments/{exp_id}").status_code == 204
    assert storage.list(f"artifacts/{exp_id}/") == []
    remaining = [o.key for o in storage.list("artifacts/")]
    assert remaining == [f"artifacts/{keep_id}/teacher/results.json"]
    assert as_user("alice").get(f"/experiments/{exp_id}").status_code == 404
    assert stages_of(session_factory, exp_id) == []
    assert as_user("alice").delete(f"/experiments/{exp_id}").status_code == 404

    # A succeeded experiment can be deleted too (by an admin).
    with session_factory() as s:
        s.get(Experiment, keep_id).status = StageStatus.succeeded
        s.commit()
    assert as_user("root").delete(f"/experiments/{keep_id}").status_code == 204
    assert storage.list("artifacts/") == []


def test_broker_down_keeps_the_stage_for_the_reconciler(settings, make_user, session_factory):
    """The experiment is stored (Postgres is the truth); its first stage stays queued with no
    `enqueued_at`, which is what the reconciler re-sends."""
    import time

    from fastapi.testclient import TestClient

    from services.gateway.main import create_app
    from tests.support.devstack import free_port

    from .helpers import auth

    token = make_user("alice")
    down = settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    with TestClient(create_app(down)) as c:
        t0 = time.monotonic()
        r = c.post("/experiments", json=spec_dict("no-broker"), headers=auth(token))
        elapsed = time.monotonic() - t0
    assert r.status_code == 201, r.text
    print(f"submit with the broker down took {elapsed:.2f} s")
    assert elapsed < 15
    stages = stages_of(session_factory, r.json()["id"])
    assert stages[0].status == StageStatus.queued and stages[0].enqueued_at is None


def test_out_of_bounds_specs_are_422s_that_echo_little_and_store_nothing(as_user, session_factory):
    alice = as_user("alice")
    cases = [
        ({"student": {"train": {"epochs": 10**30}}}, "student.train.epochs"),
        ({"student": {"train": {"epochs": True}}}, "student.train.epochs"),
        ({"teacher": {"model": {"width": 10**6}}}, "teacher.model.width"),
        ({"teacher": {"train": {"num_processes": 10**4}}}, "teacher.train.num_processes"),
        ({"student": {"train": {"schedule": "s" * 100_000}}}, "student.train.schedule"),
    ]
    for patch, field in cases:
        r = alice.post("/experiments", json=spec_dict(**patch))
        assert r.status_code == 422, r.text
        fields = [e["field"] for e in r.json()["detail"]]
        assert any(f.startswith(field) for f in fields), (field, fields)
        assert len(r.content) < 3000  # a 100 kB value is echoed as a short prefix only
    r = alice.post(
        "/experiments",
        json=spec_dict(
            distillation={
                "losses": [
                    {"kind": "feature_mse", "student_tap": "encoder.1", "teacher_tap": "encoder.99"}
                ]
            }
        ),
    )
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    msg = err["msg"]
    assert err["field"] == "distillation.losses.0.teacher_tap"
    assert "distillation.losses.0.teacher_tap" in msg and "encoder.99" in msg
    assert "valid taps: encoder.0, encoder.1, bottleneck" in msg
    with session_factory() as s:
        assert s.scalars(select(Experiment)).first() is None
