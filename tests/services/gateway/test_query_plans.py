"""The list and queue pages read `limit` rows from an index, whatever the table holds.

With a `count() OVER ()` on the page, Postgres read, joined and sorted every matching row before
the LIMIT, so each list and `/queue` answer cost more as the team's history and backlog grew.
These check the plans Postgres chooses on a table of a few thousand rows."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

from sqlalchemy import Engine, insert, text

from distillery.db import Experiment, Stage
from distillery.db.models import utcnow
from services.gateway import queries

N = 2000


def _fill(engine: Engine) -> None:
    """N experiments of 4 stages, their first stages waiting on the queue."""
    t0 = utcnow()
    exps = [
        {
            "id": uuid.uuid4().hex,
            "name": f"e{i}",
            "spec": {"name": f"e{i}"},
            "status": "queued",
            "cancel_requested": False,
            "created_at": t0 + timedelta(milliseconds=i),
            "updated_at": t0,
        }
        for i in range(N)
    ]
    stages = [
        {
            "experiment_id": e["id"],
            "name": name,
            "position": p,
            "status": "queued",
            "queue": "gpu",
            "epoch": 0,
            "epochs": 0,
            "step": 0,
            "steps": 0,
            "attempts": 0,
            "enqueued_at": t0 + timedelta(milliseconds=i) if p == 0 else None,
        }
        for i, e in enumerate(exps)
        for p, name in enumerate(("teacher", "student", "distill", "profile"))
    ]
    with engine.begin() as conn:
        conn.execute(insert(Experiment.__table__), exps)
        conn.execute(insert(Stage.__table__), stages)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))


def _plan(engine: Engine, statement, params: dict) -> str:  # noqa: ANN001
    """Postgres's plan of `statement` (run with `params`), as JSON text."""
    compiled = statement.compile(dialect=engine.dialect)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + str(compiled),
            {k: params.get(k) for k in compiled.params},
        ).all()
    return json.dumps(rows[0][0])


def _rows_scanned(plan: str, relation: str) -> int:
    """Rows the statement's own scan of `relation` returned (not the counts' subplans), which
    must be an index scan: a page in index order, stopped by the LIMIT."""

    def walk(node: dict) -> dict | None:
        if node.get("Parent Relationship") == "InitPlan":
            return None
        if node.get("Relation Name") == relation:
            return node
        for child in node.get("Plans", []):
            if (found := walk(child)) is not None:
                return found
        return None

    scan = walk(json.loads(plan)[0]["Plan"])
    assert scan is not None and "Index Name" in scan, f"no index scan of {relation}: {plan}"
    return scan["Actual Rows"] * scan["Actual Loops"]


def test_list_and_queue_pages_read_their_indexes_not_every_row(engine):
    _fill(engine)
    page = queries.page_query(by_status=False, by_owner=False, top_level=False, with_spec=False)
    plan = _plan(engine, page, {"limit": 20, "offset": 0})
    assert "WindowAgg" not in plan
    assert _rows_scanned(plan, "experiments") <= 20

    by_status = queries.page_query(by_status=True, by_owner=False, top_level=False, with_spec=False)
    plan = _plan(engine, by_status, {"limit": 20, "offset": 0, "status": "queued"})
    assert _rows_scanned(plan, "experiments") <= 20

    plan = _plan(engine, queries.queue_query(), {"limit": 50, "offset": 0})
    assert "WindowAgg" not in plan
    assert "ix_stages_on_queue" in plan
    assert _rows_scanned(plan, "stages") <= 50  # the counts are subplans of their own
