"""The dataset check's guarded updates, on SQLite (the same code runs on Postgres in the
service tests): only `checking` → `ready | invalid`, only by the holder; a dead or expired
holder is handed on."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from distillery.checking import lifecycle
from distillery.db import Dataset
from distillery.stages.lifecycle import process_identity

LEASE = timedelta(seconds=30)
NONE = lifecycle.Lost([], [])


def _dataset(sessions, archive_key: str | None = "datasets/d1.archive", age_s: float = 0) -> str:
    with sessions.begin() as s:
        s.add(
            Dataset(
                id="d1",
                name="d",
                format="cityscapes",
                prefix="datasets/d1",
                status="checking",
                archive_key=archive_key,
                created_at=datetime.now(UTC) - timedelta(seconds=age_s),
            )
        )
    return "d1"


def _row(sessions, dataset_id: str) -> Dataset:
    with sessions() as s:
        return s.get(Dataset, dataset_id)


def test_a_check_is_held_once_and_only_its_holder_ends_it(sessions) -> None:
    d = _dataset(sessions)
    with sessions.begin() as s:
        claimed = lifecycle.claim(s, d, "w:1", LEASE)
        assert claimed.attempt == 1 and claimed.archive_key == "datasets/d1.archive"
    with sessions.begin() as s:
        assert lifecycle.claim(s, d, "w:2", LEASE) is None  # a live holder keeps it
        assert not lifecycle.heartbeat(s, d, "w:2", LEASE)
        assert not lifecycle.finish(s, d, "w:2", lifecycle.INVALID, error="late duplicate")
        assert lifecycle.heartbeat(s, d, "w:1", LEASE)
        assert lifecycle.finish(s, d, "w:1", lifecycle.READY, summary={"train": {"images": 3}})
    row = _row(sessions, d)
    assert row.status == "ready" and row.error is None and row.summary["train"]["images"] == 3
    assert row.check_holder is None and row.archive_key is None
    with sessions.begin() as s:  # a finished check is never taken again, nor flipped
        assert lifecycle.claim(s, d, "w:3", LEASE) is None
        assert not lifecycle.finish(s, d, "w:1", lifecycle.INVALID, error="flip")
    assert _row(sessions, d).status == "ready"
    with sessions.begin() as s, pytest.raises(ValueError, match="ready or invalid"):
        lifecycle.finish(s, d, "w:1", "checking")


def test_a_dead_or_expired_holder_is_handed_on_and_the_check_sent_again(sessions) -> None:
    d = _dataset(sessions)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with sessions.begin() as s:
        lifecycle.claim(s, d, process_identity(dead.pid), LEASE)
    with sessions.begin() as s:  # a dead process of this host: taken over at once
        assert lifecycle.requeue_lost(s, datetime.now(UTC), stale_after_s=60).taken_over == [d]
    assert _row(sessions, d).check_holder is None
    with sessions.begin() as s:
        assert lifecycle.claim(s, d, "other-host/1:7", LEASE).attempt == 2
    with sessions.begin() as s:  # a live (unknown) holder within its lease is left alone
        assert lifecycle.requeue_lost(s, datetime.now(UTC), stale_after_s=60) == NONE
        later = datetime.now(UTC) + LEASE + timedelta(seconds=1)
        assert lifecycle.requeue_lost(s, later, stale_after_s=60).taken_over == [d]  # expired
    with sessions.begin() as s:  # not held, just sent: wait for `stale_after`
        lifecycle.mark_enqueued(s, d)
    with sessions.begin() as s:
        assert lifecycle.requeue_lost(s, datetime.now(UTC), stale_after_s=60) == NONE
        later = datetime.now(UTC) + timedelta(seconds=61)
        assert lifecycle.requeue_lost(s, later, stale_after_s=60) == lifecycle.Lost([], [d])


def test_a_never_sent_check_waits_for_its_sender_then_is_sent(sessions) -> None:
    d = _dataset(sessions, archive_key=None, age_s=5)
    with sessions.begin() as s:
        assert lifecycle.requeue_lost(s, datetime.now(UTC), stale_after_s=60) == NONE
        assert lifecycle.requeue_lost(s, datetime.now(UTC), stale_after_s=2).stale == [d]
        assert not lifecycle.finish(s, d, "nobody", lifecycle.READY)
