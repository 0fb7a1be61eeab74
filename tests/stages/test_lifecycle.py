"""The stage lifecycle's guarded updates, on SQLite (the same code runs on Postgres in the
worker tests): only the expected transition, only by the lease holder."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest

from distillery.db import Experiment, Stage, StageStatus
from distillery.spec import ExperimentSpec
from distillery.stages import lifecycle
from distillery.stages.lifecycle import StageLost
from distillery.stages.plan import insert_experiment

LEASE = timedelta(seconds=30)
SPEC = {
    "name": "life",
    "data": {
        "train": [{"format": "cityscapes", "root": "a"}],
        "val": [{"format": "cityscapes", "root": "a"}],
    },
    "stages": ["teacher", "student"],
}


@pytest.fixture
def stage_ids(sessions) -> list[int]:
    with sessions.begin() as s:
        inserted = insert_experiment(s, ExperimentSpec.model_validate(SPEC), send_first=False)
        return [st["id"] for st in inserted.stages]


def test_a_stage_is_claimed_once_and_only_its_holder_writes(sessions, stage_ids) -> None:
    teacher, student = stage_ids
    with sessions.begin() as s:
        assert lifecycle.claim(s, student, "w:1", LEASE) is None  # waits for the teacher
        assert lifecycle.claim(s, teacher, "w:1", LEASE).attempts == 1
    with sessions.begin() as s:
        assert lifecycle.claim(s, teacher, "other-host/1:2", LEASE) is None  # a live lease
    with sessions.begin() as s, pytest.raises(StageLost):
        lifecycle.renew(s, teacher, "other-host/1:2", LEASE)
    with sessions.begin() as s:
        lifecycle.renew(s, teacher, "w:1", LEASE, (1, 2, 3, 4))
        lifecycle.record_metric(s, teacher, "w:1", 1, 4, {"miou": 0.5, "loss": float("nan")})
    with sessions.begin() as s:  # the same epoch again (a resumed stage): still one row
        lifecycle.record_metric(s, teacher, "w:1", 1, 4, {"miou": 0.6, "loss": 1.0})
    with sessions() as s:
        st = s.get(Stage, teacher)
        assert (st.epoch, st.step) == (1, 3)
        assert [m.values for m in st.metrics] == [{"miou": 0.6, "loss": 1.0}]
    with sessions.begin() as s:
        exp = lifecycle.succeed(
            s, teacher, "w:1", result={"x": float("inf")}, model_key="k", wandb=None
        )
        assert exp.status == StageStatus.running  # the student waits in its queue
        assert s.get(Stage, teacher).result == {"x": None}  # nothing non-finite is stored
    with sessions.begin() as s, pytest.raises(StageLost):  # a second success is refused
        lifecycle.succeed(s, teacher, "w:1", result=None, model_key=None, wandb=None)


def test_release_retry_and_the_reconciler_compare_and_set(sessions, stage_ids) -> None:
    teacher, _student = stage_ids
    with sessions.begin() as s:
        lifecycle.claim(s, teacher, "w:1", LEASE)
    with sessions.begin() as s:
        assert not lifecycle.release(s, teacher, "w:2", "not mine")
        assert lifecycle.release(s, teacher, "w:1", "preempted")
    with sessions() as s:
        st = s.get(Stage, teacher)
        assert (st.status, st.worker_id, st.enqueued_at) == (StageStatus.queued, None, None)
    with sessions.begin() as s:
        lifecycle.claim(s, teacher, "w:3", timedelta(seconds=-1))  # already expired
    with sessions.begin() as s:
        lost = lifecycle.requeue_lost(s, lifecycle.now(), 30)
        assert [x.id for x in lost] == [teacher]
    with sessions.begin() as s:
        lifecycle.claim(s, teacher, "w:4", LEASE)
        assert lifecycle.fail(s, teacher, "w:4", "boom")
    with sessions() as s:
        exp = s.get(Experiment, s.get(Stage, teacher).experiment_id)
        assert exp.status == StageStatus.failed
        assert [x.status for x in exp.stages] == [StageStatus.failed, StageStatus.cancelled]
    with sessions.begin() as s:
        exp = s.get(Experiment, s.get(Stage, teacher).experiment_id)
        first = lifecycle.retry(s, exp)
        assert first.id == teacher and exp.status == StageStatus.queued
        assert [x.status for x in exp.stages] == [StageStatus.queued, StageStatus.queued]
        with pytest.raises(ValueError):
            lifecycle.retry(s, exp)  # nothing failed any more


def test_only_a_dead_process_of_this_host_and_pid_namespace_is_dead() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert lifecycle.holder_is_dead(lifecycle.process_identity(child.pid))
    assert not lifecycle.holder_is_dead(lifecycle.process_identity(os.getpid()))
    host, _, pid = lifecycle.process_identity(child.pid).rpartition(":")
    name = host.split("/")[0]
    # Another container with the same host name has its own PID namespace: never judged.
    assert not lifecycle.holder_is_dead(f"{name}/4026530000:{pid}")
    assert not lifecycle.holder_is_dead(f"another-node/1:{pid}")
    assert not lifecycle.holder_is_dead("local") and not lifecycle.holder_is_dead(None)
