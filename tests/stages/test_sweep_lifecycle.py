"""A sweep's stages, on SQLite and on Postgres (the worker tests run the same code with real
workers): a child's `distill` waits for its shared teacher and fails with it, the comparison
waits for every member whatever its outcome, and the parent's status sums up the members. A
retried member queues again what failed only for it and its sweep's comparison, even one that
is running."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from distillery.db import Experiment, Stage, StageStatus, make_engine, make_session_factory
from distillery.spec import ExperimentSpec
from distillery.stages import lifecycle
from distillery.stages.sweep_plan import insert_sweep

LEASE = timedelta(seconds=30)
PG_URL = os.environ.get(
    "DISTILLERY_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(params=["sqlite", "postgres"])
def sessions(request: pytest.FixtureRequest):
    """A session factory on a fresh, migrated SQLite database or Postgres schema (skipped when
    Postgres is unreachable, except under CI)."""
    if request.param == "sqlite":
        yield request.getfixturevalue("sessions_sqlite")
        return
    from sqlalchemy import text

    from tests.support import devstack

    probe = make_engine(PG_URL)
    try:
        with probe.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:  # noqa: BLE001
        if os.environ.get("CI"):
            raise
        pytest.skip(f"Postgres at {PG_URL} is not reachable")
    finally:
        probe.dispose()
    with devstack.scratch_schema(PG_URL, f"t_{uuid.uuid4().hex[:12]}") as schema:
        engine = make_engine(PG_URL, schema=schema)
        yield make_session_factory(engine)
        engine.dispose()


@pytest.fixture
def sessions_sqlite(tmp_path: Path):
    """The SQLite database of `tests.conftest.sessions` (`distillery run`'s kind)."""
    from distillery.db import migrate

    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    yield make_session_factory(engine)
    engine.dispose()


def _spec(configurations: list[dict]) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {
            "name": "sw",
            "data": {
                "train": [{"format": "cityscapes", "root": "a"}],
                "val": [{"format": "cityscapes", "root": "a"}],
            },
            "stages": ["teacher", "student", "distill"],
            "sweep": {"seeds": [0], "configurations": configurations},
        }
    )


#: Two configurations with a teacher each ("b" changes the teacher's width), one baseline.
TWO_TEACHERS = [
    {"name": "a", "overrides": {}},
    {"name": "b", "overrides": {"teacher.model.width": 16}},
]


@pytest.fixture
def sweep(sessions) -> dict[str, object]:
    """Parent id, stage ids by (role, configuration or key), the ids sent at submission."""
    with sessions.begin() as s:
        inserted = insert_sweep(s, _spec(TWO_TEACHERS))
        ids: dict[tuple[str, str], int] = {}
        for m in inserted.members:
            info = m.experiment["sweep"]
            tag = info.get("configuration") or info["key"]
            (stage,) = m.stages
            ids[(info["role"], tag)] = stage["id"]
        teachers = {
            m.experiment["sweep"]["key"]: m.stages[0]["id"]
            for m in inserted.members
            if m.experiment["sweep"]["role"] == "teacher"
        }
        child_teacher = {c.configuration: teachers[c.teacher_key] for c in inserted.plan.children}
        return {
            "parent": inserted.parent.experiment["id"],
            "compare": inserted.parent.stages[0]["id"],
            "ids": ids,
            "teacher_of": child_teacher,
            "sent": {stage_id for stage_id, _queue in inserted.to_send},
        }


def _run(sessions, stage_id: int, ok: bool = True) -> None:
    with sessions.begin() as s:
        assert lifecycle.claim(s, stage_id, "w:1", LEASE) is not None
    with sessions.begin() as s:
        if ok:
            lifecycle.succeed(
                s, stage_id, "w:1", result={"m": 1}, model_key=f"k{stage_id}", wandb=None
            )
        else:
            lifecycle.fail(s, stage_id, "w:1", "diverged at step 3 (loss=nan)")


def _status(sessions, exp_id: str) -> StageStatus:
    with sessions() as s:
        return s.get(Experiment, exp_id).status


def test_children_wait_for_their_teacher_and_get_its_model(sessions, sweep) -> None:
    ids, teacher_of = sweep["ids"], sweep["teacher_of"]
    child_a = ids[("child", "a")]
    # sent at submission: both teachers and the baseline, not the children nor the comparison
    assert sweep["sent"] == {ids[k] for k in ids if k[0] != "child"}
    with sessions.begin() as s:
        assert lifecycle.claim(s, child_a, "w:1", LEASE) is None  # its teacher is queued
        waiting = {st.id for st in lifecycle.requeue_lost(s, datetime.now(UTC), 0)}
    assert child_a not in waiting and sweep["compare"] not in waiting
    assert _status(sessions, sweep["parent"]) == StageStatus.queued
    with sessions.begin() as s:
        assert lifecycle.claim(s, teacher_of["a"], "w:1", LEASE) is not None
    assert _status(sessions, sweep["parent"]) == StageStatus.running  # a member runs
    with sessions.begin() as s:
        lifecycle.succeed(s, teacher_of["a"], "w:1", result={}, model_key="k", wandb=None)
    with sessions() as s:
        assert [st.id for st in lifecycle.ready_after(s, teacher_of["a"])] == [child_a]
    with sessions.begin() as s:
        claimed = lifecycle.claim(s, child_a, "w:1", LEASE)
    (part,) = claimed.needed
    assert (part.name, part.status, part.model_key) == (
        "teacher",
        "succeeded",
        "k",
    )


def test_a_failed_teacher_fails_only_its_children_and_the_parent_is_partial(
    sessions, sweep
) -> None:
    ids, teacher_of, compare = sweep["ids"], sweep["teacher_of"], sweep["compare"]
    _run(sessions, teacher_of["b"], ok=False)
    with sessions() as s:
        child_b = s.get(Stage, ids[("child", "b")])
        assert child_b.status == StageStatus.failed and child_b.attempts == 0
        assert child_b.error.startswith("not run: it needs stage teacher")
        assert child_b.experiment.status == StageStatus.failed
        assert s.get(Stage, ids[("child", "a")]).status == StageStatus.queued
        assert lifecycle.ready_after(s, teacher_of["b"]) == []  # others still run
    _run(sessions, teacher_of["a"])
    baseline = next(v for k, v in ids.items() if k[0] == "baseline")
    _run(sessions, baseline)
    _run(sessions, ids[("child", "a")])
    with sessions() as s:  # the last member ended: the comparison may run, despite a failure
        assert [st.id for st in lifecycle.ready_after(s, ids[("child", "a")])] == [compare]
    assert _status(sessions, sweep["parent"]) == StageStatus.running
    _run(sessions, compare)
    assert _status(sessions, sweep["parent"]) == StageStatus.partial
    with sessions() as s:
        assert lifecycle.member_counts(s, sweep["parent"]) == {"succeeded": 3, "failed": 2}


def test_every_member_succeeded_is_a_succeeded_sweep_and_none_is_failed(sessions, sweep) -> None:
    ids, compare = sweep["ids"], sweep["compare"]
    for key in sorted(ids, key=lambda k: k[0] == "child"):  # shared stages first
        _run(sessions, ids[key])
    _run(sessions, compare)
    assert _status(sessions, sweep["parent"]) == StageStatus.succeeded
    with sessions.begin() as s, pytest.raises(ValueError):  # nothing to retry
        lifecycle.retry_sweep(s, s.get(Experiment, sweep["parent"]))


def test_no_child_succeeded_is_a_failed_sweep_and_a_retry_requeues_the_failed(
    sessions, sweep
) -> None:
    ids, teacher_of, compare = sweep["ids"], sweep["teacher_of"], sweep["compare"]
    for config in ("a", "b"):
        _run(sessions, teacher_of[config], ok=False)
    baseline = next(v for k, v in ids.items() if k[0] == "baseline")
    _run(sessions, baseline)
    _run(sessions, compare)
    assert _status(sessions, sweep["parent"]) == StageStatus.failed
    with sessions.begin() as s:
        to_send = {st.id for st in lifecycle.retry_sweep(s, s.get(Experiment, sweep["parent"]))}
    # the teachers are sent again; the children and the comparison wait for them
    assert to_send == set(teacher_of.values())
    assert (
        _status(sessions, sweep["parent"]) == StageStatus.queued
        or _status(sessions, sweep["parent"]) == StageStatus.running
    )
    with sessions() as s:
        assert s.get(Stage, ids[("child", "a")]).status == StageStatus.queued
        assert s.get(Stage, compare).status == StageStatus.queued


def test_the_reconciler_sends_a_waiting_child_once_its_teacher_has_ended(sessions, sweep) -> None:
    """If the worker that ended the teacher died before sending the children, the reconciler
    finds them: runnable since the teacher's end, never sent."""
    child_a, teacher = sweep["ids"][("child", "a")], sweep["teacher_of"]["a"]
    _run(sessions, teacher)
    with sessions() as s:
        stage = s.get(Stage, child_a)
        ended = lifecycle.aware(s.get(Stage, teacher).finished_at)
        assert lifecycle.runnable_since(s, stage) == ended
        lost = {st.id for st in lifecycle.requeue_lost(s, datetime.now(UTC), 30)}
    assert child_a in lost and sweep["compare"] not in lost


def test_a_shared_teacher_cancelled_alone_fails_its_children_at_once(sessions, sweep) -> None:
    ids, teacher_of = sweep["ids"], sweep["teacher_of"]
    with sessions.begin() as s:
        teacher = s.get(Stage, teacher_of["b"]).experiment
        assert lifecycle.request_cancel(s, teacher) == [teacher_of["b"]]
    with sessions() as s:
        child_b = s.get(Stage, ids[("child", "b")])
        assert child_b.status == StageStatus.failed
        assert child_b.error.endswith("which cancelled")
        assert s.get(Stage, ids[("child", "a")]).status == StageStatus.queued
    assert _status(sessions, sweep["parent"]) == StageStatus.running


def test_a_member_retried_alone_queues_the_ended_comparison_again(sessions, sweep) -> None:
    """The sweep ended `partial` (child a failed); retrying child a queues the comparison
    again, which waits for it, runs after it, and the parent then sums up anew."""
    ids, teacher_of, compare = sweep["ids"], sweep["teacher_of"], sweep["compare"]
    child_a, child_b = ids[("child", "a")], ids[("child", "b")]
    for config in ("a", "b"):
        _run(sessions, teacher_of[config])
    _run(sessions, next(v for k, v in ids.items() if k[0] == "baseline"))
    _run(sessions, child_a, ok=False)
    _run(sessions, child_b)
    _run(sessions, compare)
    assert _status(sessions, sweep["parent"]) == StageStatus.partial
    with sessions.begin() as s:
        member = s.get(Stage, child_a).experiment
        first = lifecycle.retry(s, member)
        assert first is not None and first.id == child_a
    with sessions() as s:
        stage = s.get(Stage, compare)
        assert (stage.status, stage.finished_at, stage.error) == (StageStatus.queued, None, None)
        assert lifecycle.waits_for_others(s, stage)  # for the retried child
    assert _status(sessions, sweep["parent"]) == StageStatus.running
    with sessions.begin() as s:
        assert lifecycle.claim(s, compare, "w:1", LEASE) is None  # not before the child ends
    _run(sessions, child_a)
    with sessions() as s:
        assert [st.id for st in lifecycle.ready_after(s, child_a)] == [compare]
    assert _status(sessions, sweep["parent"]) == StageStatus.running  # until it compared
    _run(sessions, compare)
    assert _status(sessions, sweep["parent"]) == StageStatus.succeeded
    with sessions() as s:
        assert s.get(Stage, compare).attempts == 2


def test_compute_matched_baselines_wait_for_their_child_and_baseline(sessions) -> None:
    """One matched baseline per child: a `student` stage that needs the child's `distill` and
    its baseline's `student`; the comparison needs it too."""
    spec = _spec(TWO_TEACHERS)
    spec = spec.model_copy(
        update={"sweep": spec.sweep.model_copy(update={"compute_matched_baseline": True})}
    )
    with sessions.begin() as s:
        inserted = insert_sweep(s, spec)
        by_role: dict[str, list] = {}
        for m in inserted.members:
            by_role.setdefault(m.experiment["sweep"]["role"], []).append(m)
        sent = {stage_id for stage_id, _queue in inserted.to_send}
        compare = inserted.parent.stages[0]["id"]
        (baseline,) = by_role["baseline"]
        base_stage = baseline.stages[0]["id"]
        distill = {
            m.experiment["sweep"]["configuration"]: m.stages[0]["id"] for m in by_role["child"]
        }
        assert len(by_role["matched"]) == 2
        for m in by_role["matched"]:
            info = m.experiment["sweep"]
            (stage,) = m.stages
            assert stage["name"] == "student" and stage["id"] not in sent
            assert m.experiment["spec"]["student"] == baseline.experiment["spec"]["student"]
            needs = {x.id for x in lifecycle.needed_stages(s, stage["id"])}
            assert needs == {distill[info["configuration"]], base_stage}
            assert stage["id"] in {x.id for x in lifecycle.needed_stages(s, compare)}


def test_a_matched_baseline_trains_as_long_as_the_distillation() -> None:
    from distillery.stages.kinds import StageInputs
    from distillery.stages.lifecycle import Part
    from distillery.stages.train import STUDENT

    spec = _spec([{"name": "a", "overrides": {}}]).model_copy(update={"sweep": None})
    assert spec.student.train.epochs == 10

    def part(name: str, time_s: float | None, status: str = "succeeded") -> Part:
        result = {"train_time_s": time_s}
        return Part("e", None, name, status, result, None, None, None)

    inputs = StageInputs(parts=[part("distill", 36.0), part("student", 24.0)])
    assert STUDENT.prepare(spec, inputs).student.train.epochs == 15  # 10 * 36 / 24
    inputs = StageInputs(parts=[part("distill", 1.0), part("student", 24.0)])
    assert STUDENT.prepare(spec, inputs).student.train.epochs == 1  # at least one
    assert STUDENT.prepare(spec, StageInputs()).student.train.epochs == 10  # a plain baseline
    inputs = StageInputs(parts=[part("distill", None), part("student", 24.0)])
    with pytest.raises(ValueError, match="stage distill of experiment e recorded no training"):
        STUDENT.prepare(spec, inputs)


# ------------------------------------------------------------------------------ retries


@pytest.fixture
def matched_sweep(sessions) -> dict[str, object]:
    """A sweep with compute-matched baselines: parent id, the comparison's stage id and the
    stage ids of each teacher, child (`distill`) and matched baseline (`student`) by
    configuration, and the baseline's."""
    spec = _spec(TWO_TEACHERS)
    spec = spec.model_copy(
        update={"sweep": spec.sweep.model_copy(update={"compute_matched_baseline": True})}
    )
    with sessions.begin() as s:
        inserted = insert_sweep(s, spec)
        out: dict[str, dict[str, int]] = {"teacher": {}, "child": {}, "matched": {}}
        teachers = {}
        for m in inserted.members:
            info, (stage,) = m.experiment["sweep"], m.stages
            if info["role"] == "baseline":
                baseline = stage["id"]
            elif info["role"] == "teacher":
                teachers[info["key"]] = stage["id"]
            else:
                out[info["role"]][info["configuration"]] = stage["id"]
        out["teacher"] = {c.configuration: teachers[c.teacher_key] for c in inserted.plan.children}
        return {
            **out,
            "baseline": baseline,
            "parent": inserted.parent.experiment["id"],
            "compare": inserted.parent.stages[0]["id"],
        }


def _stage(sessions, stage_id: int) -> tuple[StageStatus, str | None]:
    with sessions() as s:
        stage = s.get(Stage, stage_id)
        return stage.status, stage.error


def test_a_retried_child_requeues_its_matched_baseline_that_failed_for_it(
    sessions, matched_sweep
) -> None:
    """Child a's `distill` failed, so its matched baseline failed unrun (a stage it needs
    failed); retrying child a queues that baseline again: it waits for the child, is sent
    when it ends, and the sweep then succeeds."""
    sw = matched_sweep
    child_a, matched_a, compare = sw["child"]["a"], sw["matched"]["a"], sw["compare"]
    _run(sessions, sw["baseline"])
    for config in ("a", "b"):
        _run(sessions, sw["teacher"][config])
    _run(sessions, child_a, ok=False)
    status, error = _stage(sessions, matched_a)
    assert status == StageStatus.failed and error.startswith(lifecycle.NOT_RUN_NEEDS)
    _run(sessions, sw["child"]["b"])
    _run(sessions, sw["matched"]["b"])
    _run(sessions, compare)
    assert _status(sessions, sw["parent"]) == StageStatus.partial
    with sessions.begin() as s:
        first = lifecycle.retry(s, s.get(Stage, child_a).experiment)
        assert first.id == child_a and not lifecycle.waits_for_others(s, first)
    with sessions() as s:
        stage = s.get(Stage, matched_a)
        assert (stage.status, stage.error, stage.finished_at) == (StageStatus.queued, None, None)
        assert stage.experiment.status == StageStatus.queued
        assert lifecycle.waits_for_others(s, stage)
        assert lifecycle.member_counts(s, sw["parent"]) == {"succeeded": 5, "queued": 2}
    _run(sessions, child_a)
    with sessions() as s:  # the matched baseline may run now; the comparison waits for it
        assert [st.id for st in lifecycle.ready_after(s, child_a)] == [matched_a]
    _run(sessions, matched_a)
    with sessions() as s:
        assert [st.id for st in lifecycle.ready_after(s, matched_a)] == [compare]
    _run(sessions, compare)
    assert _status(sessions, sw["parent"]) == StageStatus.succeeded


def test_a_retried_teacher_requeues_what_failed_for_it_transitively_and_nothing_else(
    sessions, matched_sweep
) -> None:
    """Teacher b failed: child b failed for it, and matched b for child b. Retrying teacher b
    queues child b again; matched b too once nothing it needs has failed any more (here the
    baseline failed too, until it is retried). A stage that failed on its own stays failed."""
    sw = matched_sweep
    _run(sessions, sw["teacher"]["b"], ok=False)
    _run(sessions, sw["teacher"]["a"])
    _run(sessions, sw["baseline"], ok=False)  # matched a fails for it (b already had)
    _run(sessions, sw["child"]["a"], ok=False)  # on its own
    _run(sessions, sw["compare"])
    assert _status(sessions, sw["parent"]) == StageStatus.failed
    for config in ("a", "b"):
        assert _stage(sessions, sw["matched"][config])[0] == StageStatus.failed
    assert _stage(sessions, sw["child"]["b"])[1].startswith(lifecycle.NOT_RUN_NEEDS)

    with sessions.begin() as s:  # the baseline still failed: matched b stays failed
        lifecycle.retry(s, s.get(Stage, sw["teacher"]["b"]).experiment)
    assert _stage(sessions, sw["child"]["b"]) == (StageStatus.queued, None)
    assert _stage(sessions, sw["matched"]["b"])[0] == StageStatus.failed
    assert _stage(sessions, sw["child"]["a"])[0] == StageStatus.failed  # its own failure

    with sessions.begin() as s:  # now matched b may run (after child b); a waits for child a
        lifecycle.retry(s, s.get(Stage, sw["baseline"]).experiment)
    assert _stage(sessions, sw["matched"]["b"]) == (StageStatus.queued, None)
    assert _stage(sessions, sw["matched"]["a"])[0] == StageStatus.failed
    with sessions() as s:
        counts = lifecycle.member_counts(s, sw["parent"])
    assert counts == {"succeeded": 1, "queued": 4, "failed": 2}


def test_a_teacher_retried_requeues_the_child_and_its_matched_baseline(
    sessions, matched_sweep
) -> None:
    """Teacher b failed; child b failed for it, and matched b for child b (transitively):
    retrying teacher b alone queues both again, each waiting for the stage before it."""
    sw = matched_sweep
    _run(sessions, sw["baseline"])
    _run(sessions, sw["teacher"]["b"], ok=False)
    assert _stage(sessions, sw["matched"]["b"])[1].startswith(lifecycle.NOT_RUN_NEEDS)
    with sessions.begin() as s:
        lifecycle.retry(s, s.get(Stage, sw["teacher"]["b"]).experiment)
    with sessions() as s:
        for stage_id in (sw["child"]["b"], sw["matched"]["b"]):
            stage = s.get(Stage, stage_id)
            assert stage.status == StageStatus.queued and lifecycle.waits_for_others(s, stage)
    _run(sessions, sw["teacher"]["b"])
    with sessions() as s:
        assert [st.id for st in lifecycle.ready_after(s, sw["teacher"]["b"])] == [sw["child"]["b"]]


def test_a_retried_sweep_sends_only_what_waits_for_nothing(sessions, matched_sweep) -> None:
    """`retry_sweep` with a child and its matched baseline failed: the child is sent, its
    matched baseline (queued again with it, whatever the members' order) waits for it."""
    sw = matched_sweep
    _run(sessions, sw["baseline"])
    for config in ("a", "b"):
        _run(sessions, sw["teacher"][config])
    _run(sessions, sw["child"]["a"], ok=False)
    _run(sessions, sw["child"]["b"])
    _run(sessions, sw["matched"]["b"])
    _run(sessions, sw["compare"])
    with sessions.begin() as s:
        sent = [st.id for st in lifecycle.retry_sweep(s, s.get(Experiment, sw["parent"]))]
    assert sent == [sw["child"]["a"]]
    assert _stage(sessions, sw["matched"]["a"]) == (StageStatus.queued, None)


def _finish_with_child_a_failed(sessions, sweep) -> None:
    ids, teacher_of = sweep["ids"], sweep["teacher_of"]
    for config in ("a", "b"):
        _run(sessions, teacher_of[config])
    _run(sessions, next(v for k, v in ids.items() if k[0] == "baseline"))
    _run(sessions, ids[("child", "a")], ok=False)
    _run(sessions, ids[("child", "b")])


def test_a_member_retried_while_the_comparison_runs_makes_it_run_again(sessions, sweep) -> None:
    """The comparison runs when child a is retried: it ends queued again instead of succeeded
    (no result), waits for child a, and the sweep succeeds once it ran again."""
    child_a, compare = sweep["ids"][("child", "a")], sweep["compare"]
    _finish_with_child_a_failed(sessions, sweep)
    with sessions.begin() as s:
        assert lifecycle.claim(s, compare, "w:1", LEASE) is not None
    with sessions.begin() as s:
        assert lifecycle.retry(s, s.get(Stage, child_a).experiment).id == child_a
    status, error = _stage(sessions, compare)
    assert status == StageStatus.running and error.startswith(lifecycle.RERUN)
    with sessions.begin() as s:
        lifecycle.succeed(s, compare, "w:1", result={"stale": True}, model_key=None, wandb=None)
        assert lifecycle.next_stage(s, compare) is None  # it waits for child a
    with sessions() as s:
        stage = s.get(Stage, compare)
        assert (stage.status, stage.result, stage.worker_id) == (StageStatus.queued, None, None)
        assert lifecycle.waits_for_others(s, stage)
    assert _status(sessions, sweep["parent"]) == StageStatus.running
    _run(sessions, child_a)
    with sessions() as s:
        assert [st.id for st in lifecycle.ready_after(s, child_a)] == [compare]
    _run(sessions, compare)
    assert _status(sessions, sweep["parent"]) == StageStatus.succeeded
    with sessions() as s:
        stage = s.get(Stage, compare)
        assert (stage.attempts, stage.result, stage.error) == (2, {"m": 1}, None)


def test_a_comparison_that_outlived_the_retried_member_is_sent_again_by_its_worker(
    sessions, sweep
) -> None:
    """Child a, retried while the comparison runs, ends first (its `ready_after` cannot send
    the running comparison): the comparison, failing or succeeding after it, is queued again
    and its own worker sends it (`next_stage`)."""
    child_a, compare = sweep["ids"][("child", "a")], sweep["compare"]
    _finish_with_child_a_failed(sessions, sweep)
    with sessions.begin() as s:
        assert lifecycle.claim(s, compare, "w:1", LEASE) is not None
    with sessions.begin() as s:
        lifecycle.retry(s, s.get(Stage, child_a).experiment)
    _run(sessions, child_a)
    with sessions() as s:
        assert lifecycle.ready_after(s, child_a) == []
    with sessions.begin() as s:
        assert lifecycle.fail(s, compare, "w:1", "storage unreachable")
        assert lifecycle.next_stage(s, compare).id == compare
    assert _stage(sessions, compare)[0] == StageStatus.queued
    assert _status(sessions, sweep["parent"]) == StageStatus.running
    _run(sessions, compare)
    assert _status(sessions, sweep["parent"]) == StageStatus.succeeded


def test_a_comparison_cancelled_after_a_retry_is_cancelled(sessions, sweep) -> None:
    """A re-run requested is not one after a cancel: the comparison ends cancelled."""
    child_a, compare = sweep["ids"][("child", "a")], sweep["compare"]
    _finish_with_child_a_failed(sessions, sweep)
    with sessions.begin() as s:
        assert lifecycle.claim(s, compare, "w:1", LEASE) is not None
    with sessions.begin() as s:
        lifecycle.retry(s, s.get(Stage, child_a).experiment)
    with sessions.begin() as s:
        lifecycle.request_cancel(s, s.get(Experiment, sweep["parent"]))
    with sessions.begin() as s:
        lifecycle.fail(s, compare, "w:1", "cancelled by request", status=StageStatus.cancelled)
    assert _stage(sessions, compare)[0] == StageStatus.cancelled
    assert _status(sessions, sweep["parent"]) == StageStatus.cancelled


def test_the_stored_plan_lists_and_counts_the_matched_baselines(sessions, matched_sweep) -> None:
    """The parent's plan (what the API answers a submission with and the dry runs print)
    lists the compute-matched baselines, one per child, and counts their stages."""
    with sessions() as s:
        parent = s.get(Experiment, matched_sweep["parent"])
        plan = parent.sweep["plan"]
        members = [m.sweep for m in lifecycle.members(s, parent.id)]
    matched = sorted((m["configuration"], m["seed"]) for m in members if m["role"] == "matched")
    assert matched == [("a", 0), ("b", 0)]
    assert sorted((m["configuration"], m["seed"]) for m in plan["matched"]) == matched
    assert plan["stage_counts"]["matched"] == [2, 2]
    assert plan["compute_matched_baseline"] is True
