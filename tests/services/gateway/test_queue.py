"""`/queue`: the one shared view of what is queued and running, in enqueue order."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from distillery.db import Stage, StageStatus
from distillery.db.models import utcnow
from distillery.spec import ExperimentSpec
from distillery.stages.plan import insert_experiment
from services.gateway.schemas import QueueOut

from .helpers import spec_dict


def test_queue_shows_running_and_queued_stages_by_enqueue_time(as_user, session_factory):
    first = as_user("alice").post("/experiments", json=spec_dict("first")).json()["id"]
    second = as_user("bob").post("/experiments", json=spec_dict("second")).json()["id"]
    third = as_user("bob").post("/experiments", json=spec_dict("third")).json()["id"]
    t0 = utcnow()
    with session_factory() as s:
        stages = {
            e: s.scalar(select(Stage).where(Stage.experiment_id == e, Stage.position == 0))
            for e in (first, second, third)
        }
        run = stages[first]
        run.status, run.worker_id = StageStatus.running, "gpu@node-7"
        run.enqueued_at, run.started_at = t0 - timedelta(minutes=10), t0 - timedelta(minutes=9)
        run.epoch, run.epochs, run.step, run.steps = 1, 2, 4, 8
        stages[second].enqueued_at = t0 - timedelta(minutes=5)
        stages[third].enqueued_at = t0 - timedelta(minutes=7)
        s.commit()
    assert as_user("root").post(f"/experiments/{third}/cancel").status_code == 200

    q = as_user("bob").get("/queue").json()
    assert (q["running"], q["queued"]) == (1, 1)
    (running, waiting) = q["entries"]
    assert running["experiment_id"] == first and running["owner"] == "alice"
    assert running["stage"] == "teacher" and running["worker_id"] == "gpu@node-7"
    assert (running["epoch"], running["epochs"], running["step"], running["steps"]) == (1, 2, 4, 8)
    assert running["started_at"] is not None
    assert waiting["experiment_id"] == second and waiting["owner"] == "bob"
    assert waiting["status"] == "queued" and waiting["worker_id"] is None
    # Later stages wait in Postgres, not on the queue: only first stages are listed.
    assert {e["stage"] for e in q["entries"]} == {"teacher"}


def test_empty_queue(as_user):
    assert as_user("alice").get("/queue").json() == {
        "running": 0,
        "queued": 0,
        "total": 0,
        "limit": 50,
        "offset": 0,
        "entries": [],
    }


def test_the_queue_is_paged_and_counts_the_whole_view(as_user, session_factory):
    """A team's backlog does not make every `/queue` answer longer: at most `limit` entries (50
    unless asked), in enqueue order; the counts are of the whole view, also past its end."""
    spec = ExperimentSpec.model_validate(spec_dict("q"))
    with session_factory() as s:  # stored as `distillery run` would (the caps stay out of it)
        ids = [
            insert_experiment(s, spec, queues={"gpu": "gpu"}, send_first=False).experiment["id"]
            for _ in range(53)
        ]
        s.commit()
    t0 = utcnow()
    with session_factory() as s:
        for i, e in enumerate(ids):  # enqueued one second apart, in submission order
            st = s.scalar(select(Stage).where(Stage.experiment_id == e, Stage.position == 0))
            st.enqueued_at = t0 - timedelta(seconds=len(ids) - i)
            if i == 10:
                st.status, st.worker_id = StageStatus.running, "gpu@node-1"
        s.commit()

    default = as_user("bob").get("/queue").json()
    # Built from rows, not through the model: exactly the model's fields and JSON.
    assert QueueOut.model_validate(default).model_dump(mode="json") == default
    assert (default["total"], default["running"], default["queued"]) == (53, 1, 52)
    assert (default["limit"], default["offset"]) == (50, 0)
    assert [e["experiment_id"] for e in default["entries"]] == ids[:50]

    page = as_user("bob").get("/queue", params={"limit": 5, "offset": 50}).json()
    assert [e["experiment_id"] for e in page["entries"]] == ids[50:]
    assert (page["total"], page["running"], page["queued"]) == (53, 1, 52)

    past = as_user("bob").get("/queue", params={"limit": 5, "offset": 1000}).json()
    assert past["entries"] == [] and (past["total"], past["running"], past["queued"]) == (53, 1, 52)

    for bad in ({"limit": 0}, {"limit": 501}, {"offset": -1}):
        r = as_user("bob").get("/queue", params=bad)
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == next(iter(bad))
