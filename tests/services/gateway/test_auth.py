"""Bearer tokens: 401 without a known token, 403 for someone else's experiment, admins may."""

from __future__ import annotations

from sqlalchemy import select

from distillery.db import ApiToken
from distillery.db.auth import hash_token

from .helpers import auth, spec_dict


def test_every_call_but_health_needs_a_known_token(client, tokens):
    assert client.get("/health").status_code == 200
    for method, path in [
        ("GET", "/experiments"),
        ("POST", "/experiments"),
        ("GET", "/experiments/x"),
        ("GET", "/experiments/x/metrics"),
        ("POST", "/experiments/x/cancel"),
        ("DELETE", "/experiments/x"),
        ("GET", "/datasets"),
        ("POST", "/datasets"),
        ("GET", "/datasets/x"),
        ("GET", "/queue"),
    ]:
        r = client.request(method, path)
        assert r.status_code == 401, (method, path, r.status_code)
        assert r.headers["www-authenticate"] == "Bearer"
        r = client.request(method, path, headers=auth("not-a-token"))
        assert r.status_code == 401 and r.json()["detail"] == "unknown token", (method, path)
    r = client.get("/experiments", headers={"Authorization": f"Basic {tokens['alice']}"})
    assert r.status_code == 401
    assert client.get("/experiments", headers=auth(tokens["alice"])).status_code == 200


def test_owner_or_admin_may_cancel_others_may_read(as_user):
    a = as_user("alice").post("/experiments", json=spec_dict("mine")).json()["id"]
    b = as_user("alice").post("/experiments", json=spec_dict("mine2")).json()["id"]
    assert as_user("bob").get(f"/experiments/{a}").status_code == 200
    r = as_user("bob").post(f"/experiments/{a}/cancel")
    assert r.status_code == 403 and "owner" in r.json()["detail"]
    assert as_user("bob").get(f"/experiments/{a}").json()["cancel_requested"] is False
    assert as_user("alice").post(f"/experiments/{a}/cancel").status_code == 200
    assert as_user("root").post(f"/experiments/{b}/cancel").status_code == 200
    assert as_user("bob").delete(f"/experiments/{b}").status_code == 403
    assert as_user("root").delete(f"/experiments/{b}").status_code == 204


def test_tokens_are_stored_only_as_hashes(session_factory, tokens):
    with session_factory() as s:
        stored = set(s.scalars(select(ApiToken.token_hash)))
    assert stored == {hash_token(t) for t in tokens.values()}
    assert not stored & set(tokens.values())
