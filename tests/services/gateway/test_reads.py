"""The cheap read paths: detail `ETag` / `304`, summary lists (`with_spec`), the token cache."""

from __future__ import annotations

from sqlalchemy import delete, select

from distillery.db import ApiToken, Artifact, Metric, Stage, StageStatus
from services.gateway.schemas import ExperimentSummary, ExperimentWithSpec

from .helpers import auth, spec_dict


def _first_stage(session_factory, exp_id: str) -> int:
    with session_factory() as s:
        return s.scalar(select(Stage.id).where(Stage.experiment_id == exp_id, Stage.position == 0))


def test_detail_etag_answers_304_until_something_changes(as_user, session_factory):
    exp_id = as_user("alice").post("/experiments", json=spec_dict("tagged")).json()["id"]
    bob = as_user("bob")
    r = bob.get(f"/experiments/{exp_id}")
    assert r.status_code == 200 and r.json()["spec"]["name"] == "tagged"
    etag = r.headers["etag"]
    assert etag.startswith('W/"')

    again = bob.get(f"/experiments/{exp_id}", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    # One of several tags, or the strong form of the same tag, matches too.
    listed = bob.get(f"/experiments/{exp_id}", headers={"If-None-Match": f'"zz", {etag[2:]}'})
    assert listed.status_code == 304
    assert bob.get(f"/experiments/{exp_id}", headers={"If-None-Match": '"zz"'}).status_code == 200

    stage_id = _first_stage(session_factory, exp_id)
    seen = {etag}

    def changed() -> str:
        r = bob.get(f"/experiments/{exp_id}", headers={"If-None-Match": etag})
        assert r.status_code == 200, "the change did not change the ETag"
        assert r.headers["etag"] not in seen
        seen.add(r.headers["etag"])
        return r.headers["etag"]

    with session_factory() as s:  # a worker's progress report
        st = s.get(Stage, stage_id)
        st.status, st.epoch, st.epochs, st.step, st.steps = StageStatus.running, 1, 2, 3, 10
        s.commit()
    etag = changed()
    body = bob.get(f"/experiments/{exp_id}").json()
    assert body["stages"][0]["step"] == 3 and body["stages"][0]["status"] == "running"

    with session_factory() as s:  # an epoch's metrics
        s.add(Metric(stage_id=stage_id, epoch=1, step=10, values={"miou": 0.4}))
        s.commit()
    etag = changed()

    with session_factory() as s:  # an artifact
        s.add(Artifact(experiment_id=exp_id, stage="teacher", kind="results", key="k", size=1))
        s.commit()
    etag = changed()
    assert bob.get(f"/experiments/{exp_id}", headers={"If-None-Match": etag}).status_code == 304

    assert as_user("alice").post(f"/experiments/{exp_id}/cancel").status_code == 200
    changed()
    missing = bob.get("/experiments/" + "0" * 32, headers={"If-None-Match": etag})
    assert missing.status_code == 404


def test_list_items_are_summaries_and_carry_specs_on_request(as_user):
    ids = [
        as_user("alice").post("/experiments", json=spec_dict(f"s{i}")).json()["id"]
        for i in range(3)
    ]
    page = as_user("bob").get("/experiments").json()
    assert [e["id"] for e in page["items"]] == ids[::-1]
    # Built from rows, not through the models: exactly the models' fields and JSON.
    for item in page["items"]:
        assert ExperimentSummary.model_validate(item).model_dump(mode="json") == item
    for item in page["items"]:
        assert "spec" not in item and "results" not in item
        assert [s["name"] for s in item["stages"]] == ["teacher", "student", "distill", "profile"]
        assert set(item["stages"][0]) == {
            "name", "position", "status", "queue", "epoch", "epochs", "step", "steps"
        }  # fmt: skip

    page = as_user("bob").get("/experiments", params={"with_spec": True, "limit": 2}).json()
    assert [e["spec"]["name"] for e in page["items"]] == ["s2", "s1"]
    assert page["items"][0]["spec"]["student"]["model"]["width"] == 4
    assert page["total"] == 3 and len(page["items"][0]["stages"]) == 4
    for item in page["items"]:
        assert ExperimentWithSpec.model_validate(item).model_dump(mode="json") == item

    past = as_user("bob").get("/experiments", params={"offset": 10, "owner": "alice"}).json()
    assert past["items"] == [] and past["total"] == 3
    assert as_user("bob").get("/experiments", params={"owner": "nobody"}).json()["total"] == 0


def test_token_cache_trusts_a_seen_token_for_its_ttl_only(settings, make_user, session_factory):
    from fastapi.testclient import TestClient

    from services.gateway.main import create_app

    for ttl, still_works in ((60.0, True), (0.0, False)):
        token = make_user(f"u{int(ttl)}")
        with TestClient(create_app(settings.model_copy(update={"token_cache_s": ttl}))) as c:
            assert c.get("/queue", headers=auth(token)).status_code == 200
            with session_factory() as s:  # the token is revoked in the database
                s.execute(delete(ApiToken))
                s.commit()
            code = c.get("/queue", headers=auth(token)).status_code
            assert code == (200 if still_works else 401), (ttl, code)
