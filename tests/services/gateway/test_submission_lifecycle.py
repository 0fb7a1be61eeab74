"""Submissions that survive retries (`Idempotency-Key`, also across a gateway restart) and a
cancelled backlog that costs the queue nothing."""

from __future__ import annotations

import httpx
from sqlalchemy import func, select

from distillery.db import Experiment
from services.celery_app import RUN_STAGE_TASK
from tests.support import devstack

from .helpers import auth, spec_dict


def _count(session_factory) -> int:
    with session_factory() as s:
        return s.scalar(select(func.count()).select_from(Experiment))


def test_the_same_idempotency_key_returns_the_first_experiment_also_after_a_restart(
    settings, session_factory, make_user, celery_messages, queues, tmp_path
):
    alice, bob = auth(make_user("alice")), auth(make_user("bob"))
    key = {"Idempotency-Key": "submit-7f3a"}
    env = devstack.process_env(settings)
    with devstack.start_gateway(env, tmp_path / "gw1.log") as gw:
        first = httpx.post(f"{gw.url}/experiments", json=spec_dict("idem"), headers=alice | key)
        assert first.status_code == 201, first.text
        again = httpx.post(f"{gw.url}/experiments", json=spec_dict("idem"), headers=alice | key)
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    with devstack.start_gateway(env, tmp_path / "gw2.log") as gw:  # a restarted gateway
        later = httpx.post(f"{gw.url}/experiments", json=spec_dict("idem"), headers=alice | key)
        assert later.status_code == 200 and later.json()["id"] == first.json()["id"]
        other = httpx.post(f"{gw.url}/experiments", json=spec_dict("idem"), headers=bob | key)
        assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
        plain = httpx.post(f"{gw.url}/experiments", json=spec_dict("idem"), headers=alice)
        assert plain.status_code == 201
    assert _count(session_factory) == 3  # alice's key made one experiment, however often sent
    with session_factory() as s:
        first_stage = s.get(Experiment, first.json()["id"]).stages[0].id
    sent = [args for _task, args in celery_messages(queues.gpu)]
    assert sent.count([first_stage]) == 1  # and its first stage was sent once


def test_cancelling_drops_the_experiment_s_queued_messages(
    as_user, session_factory, celery_messages, queues
):
    ids = [as_user("alice").post("/experiments", json=spec_dict(f"b{i}")).json() for i in range(3)]
    with session_factory() as s:
        firsts = [s.get(Experiment, e["id"]).stages[0].id for e in ids]
    assert sorted(a[0] for _t, a in celery_messages(queues.gpu)) == sorted(firsts)
    for e in ids[:2]:
        r = as_user("alice").post(f"/experiments/{e['id']}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
    # Only the live experiment's message is left: no worker starts a process for the others.
    assert celery_messages(queues.gpu) == [(RUN_STAGE_TASK, [firsts[2]])]
