"""Limits of the shared gateway: body size (413), per-user caps (429), bounded paging and
non-finite numbers (422); each refused request writes nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from distillery.db import Experiment
from services.gateway.main import create_app

from .helpers import auth, spec_dict


@pytest.fixture
def client_with(settings) -> Iterator:
    clients: list[TestClient] = []

    def make(**overrides) -> TestClient:
        c = TestClient(create_app(settings.model_copy(update=overrides)))
        c.__enter__()
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def count(session_factory) -> int:
    with session_factory() as s:
        return s.scalar(select(func.count()).select_from(Experiment)) or 0


def test_a_body_over_the_limit_is_413_declared_or_streamed(client_with, tokens, session_factory):
    client = client_with(max_request_bytes=64 << 10)
    big = spec_dict("big", padding="x" * (200 << 10))
    r = client.post("/experiments", json=big, headers=auth(tokens["alice"]))
    assert r.status_code == 413 and "limit is 65536 bytes" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it streams
        body = json.dumps(big).encode()
        for i in range(0, len(body), 8192):
            yield body[i : i + 8192]

    r = client.post(
        "/experiments",
        content=chunks(),
        headers={**auth(tokens["alice"]), "content-type": "application/json"},
    )
    assert r.status_code == 413 and "limit is 65536 bytes" in r.json()["detail"]
    assert count(session_factory) == 0
    r = client.post("/experiments", json=spec_dict("small"), headers=auth(tokens["alice"]))
    assert r.status_code == 201, r.text


def test_per_user_cap_on_queued_and_running_experiments(client_with, tokens, session_factory):
    client = client_with(max_active_experiments=3, max_submissions_per_minute=0)
    for i in range(3):
        r = client.post("/experiments", json=spec_dict(f"e{i}"), headers=auth(tokens["alice"]))
        assert r.status_code == 201, r.text
    r = client.post("/experiments", json=spec_dict("e3"), headers=auth(tokens["alice"]))
    assert r.status_code == 429
    assert "you have 3 experiments queued or running; the cap is 3 per user" in r.json()["detail"]
    assert count(session_factory) == 3
    # bob has his own allowance; a cancelled experiment frees one of alice's
    r = client.post("/experiments", json=spec_dict("b0"), headers=auth(tokens["bob"]))
    assert r.status_code == 201
    first = client.get("/experiments?owner=alice", headers=auth(tokens["alice"])).json()
    client.post(f"/experiments/{first['items'][0]['id']}/cancel", headers=auth(tokens["alice"]))
    r = client.post("/experiments", json=spec_dict("e4"), headers=auth(tokens["alice"]))
    assert r.status_code == 201, r.text


def test_submission_rate_limit(client_with, tokens, session_factory):
    client = client_with(max_active_experiments=0, max_submissions_per_minute=2)
    for i in range(2):
        r = client.post("/experiments", json=spec_dict(f"r{i}"), headers=auth(tokens["alice"]))
        assert r.status_code == 201
    r = client.post("/experiments", json=spec_dict("r2"), headers=auth(tokens["alice"]))
    assert r.status_code == 429 and "at most 2 submissions per minute" in r.json()["detail"]
    assert r.headers["retry-after"] == "60"
    assert count(session_factory) == 2


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("offset=9223372036854775808", "offset"),
        ("offset=99999999999999999999999", "offset"),
        ("offset=-1", "offset"),
        ("limit=0", "limit"),
        ("limit=100000", "limit"),
    ],
)
def test_paging_is_bounded(as_user, query, field):
    r = as_user("alice").get(f"/experiments?{query}")
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["field"] == field


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_in_a_body_are_422(as_user, session_factory, token):
    body = json.dumps(spec_dict("nan")).replace('"epochs": 2', f'"epochs": {token}')
    body = body.replace('"tracking"', f'"profiling": {{"target_cv": {token}}}, "tracking"')
    r = as_user("alice").post(
        "/experiments", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422, r.text
    fields = {e["field"] for e in r.json()["detail"]}
    assert {"teacher.train.epochs", "profiling.target_cv"} <= fields
    json.loads(r.text)  # the answer itself is valid JSON (no NaN echoed back)
    assert count(session_factory) == 0


def test_concurrent_submissions_cannot_overshoot_the_cap(settings, make_user, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from tests.support import devstack

    token = make_user("alice")
    env = devstack.process_env(settings, max_active_experiments=3, max_submissions_per_minute=0)
    with devstack.start_gateway(env, tmp_path / "gw.log", extra_args=["--workers", "2"]) as gw:

        def submit(i: int) -> int:
            r = httpx.post(
                f"{gw.url}/experiments", json=spec_dict(f"c{i}"), headers=auth(token), timeout=60
            )
            return r.status_code

        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(submit, range(12)))
    assert sorted(codes) == [201] * 3 + [429] * 9, codes


def test_with_the_caps_off_a_submission_takes_no_lock_on_its_user(
    client_with, tokens, session_factory
):
    """The lock on the user's row only serves the caps: with both off, a submission goes
    through while another transaction holds that row for an update (which the caps' lock would
    wait for; the experiment's foreign key only needs the row's key to stay)."""
    import threading

    from distillery.db import User

    client = client_with(max_active_experiments=0, max_submissions_per_minute=0)
    answers: list = []
    with session_factory() as holder:
        # FOR NO KEY UPDATE: what an UPDATE of the user takes; the caps' FOR UPDATE waits on it
        holder.scalar(select(User).where(User.name == "alice").with_for_update(key_share=True))
        submit = threading.Thread(
            target=lambda: answers.append(
                client.post("/experiments", json=spec_dict("free"), headers=auth(tokens["alice"]))
            )
        )
        submit.start()
        submit.join(timeout=60)
        done_while_held = not submit.is_alive()
        holder.rollback()  # releases the row; a blocked submission finishes now
    submit.join(timeout=60)
    assert done_while_held, "the submission waited for the lock on its user's row"
    assert answers[0].status_code == 201, answers[0].text
    assert count(session_factory) == 1


def test_a_nul_character_in_a_parameter_is_422_naming_it(as_user):
    """Postgres text cannot hold NUL: a query parameter or path with one is refused up front
    (it was a 500 from the database for `GET /experiments?owner=a%00b`)."""
    r = as_user("alice").get("/experiments?top_level=true&owner=a%00b")
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["field"] == "owner"
    r = as_user("alice").get("/experiments/abc%00def")
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "(path)"
    assert as_user("alice").get("/experiments?owner=alice").status_code == 200
