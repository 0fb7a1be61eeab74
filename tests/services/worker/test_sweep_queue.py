"""Sweeps on the shared queue, for real: specs submitted through the gateway (uvicorn), a gpu and
a profiler Celery worker and the reconciler, Postgres, Redis and the S3 server.

A 2-configuration x 2-seed sweep trains its teacher once and each seed's baseline once, and the
parent ends with the comparison (its report with sample predictions); a configuration whose own
teacher diverges fails only its child (which never starts), the others finish and the parent
ends `partial`; a child that failed, retried alone once its cause is gone, reruns the
comparison, which then has its row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from distillery.cli.main import app
from distillery.db import Experiment, Stage
from distillery.s3 import make_storage
from distillery.storage import get_dir
from tests.support.experiments import tiny_spec
from tests.support.wandb_runs import read_offline_run

pytestmark = pytest.mark.slow

FINISHED = {"succeeded", "failed", "cancelled", "partial"}


def _sweep(name: str, data_root: Path, sweep: dict[str, Any]) -> dict[str, Any]:
    spec = tiny_spec(
        name, data_root, epochs=1, steps=2, stages=["teacher", "student", "distill"]
    ).model_dump(mode="json")
    spec["sweep"] = sweep
    return spec


def _client(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _wait(client: httpx.Client, exp_id: str, poll, timeout_s: float) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body = client.get(f"/experiments/{exp_id}").json()
        return body if body["status"] in FINISHED else None

    return poll(done, timeout_s, f"sweep {exp_id}", interval_s=1.0)


def _run(client: httpx.Client, spec: dict[str, Any], start_worker, start_reconciler, poll):
    """Submit the sweep `spec`, start a gpu and a profiler worker and the reconciler, and wait
    for the sweep to end; returns the submission's answer and the parent as it ended."""
    r = client.post("/experiments", json=spec)
    assert r.status_code == 201, r.text
    start_worker("gpu")
    start_worker("profiler")
    start_reconciler(interval_s=2, stale_after_s=30)
    return r.json(), _wait(client, r.json()["id"], poll, 420)


def _stages_by_name(session_factory, parent_id: str) -> dict[str, list[Stage]]:
    with session_factory() as s:
        ids = s.scalars(select(Experiment.id).where(Experiment.parent_id == parent_id)).all()
        stages = s.scalars(select(Stage).where(Stage.experiment_id.in_(ids))).all()
    out: dict[str, list[Stage]] = {}
    for st in stages:
        out.setdefault(st.name, []).append(st)
    return out


def _assert_samples(storage, parent_id: str, results: dict[str, Any], listed: dict) -> None:
    """The report's sample predictions: listed with the parent's artifacts, stored (a PNG) and
    shown in the stored report."""
    assert results["samples_png"] == "samples.png", results["analyses_error"]
    key = f"artifacts/{parent_id}/report/samples.png"
    assert listed[key] == "report"
    assert storage.get_bytes(key).startswith(b"\x89PNG")
    report = storage.get_bytes(f"artifacts/{parent_id}/report/report.md").decode()
    assert "![Sample predictions](samples.png)" in report


def test_a_sweep_trains_shared_stages_once_and_the_parent_ends_with_the_comparison(
    settings, gateway_url, make_user, session_factory, start_worker, start_reconciler, tmp_path,
    poll,
):  # fmt: skip
    token = make_user("alice")
    alice = _client(gateway_url, token)
    spec = _sweep(
        "sweep-ok",
        tmp_path / "data",
        {"seeds": [0, 1], "grid": {"distillation.losses.1.temperature": [1, 4]}},
    )
    spec["tracking"] = {"mode": "offline"}
    body, parent = _run(alice, spec, start_worker, start_reconciler, poll)
    parent_id = body["id"]
    assert parent["status"] == "succeeded", parent
    assert parent["sweep"]["counts"] == {"succeeded": 7}

    # one teacher, one baseline per seed, one distillation per child: each trained once
    stages = _stages_by_name(session_factory, parent_id)
    assert {k: len(v) for k, v in stages.items()} == {"teacher": 1, "student": 2, "distill": 4}
    assert all(st.attempts == 1 for v in stages.values() for st in v)
    (teacher,) = stages["teacher"]
    assert all(d.started_at >= teacher.finished_at for d in stages["distill"])

    # the comparison: both configurations at both seeds, gains over the seed's own baseline
    results = parent["results"]
    rows = {c["name"]: c for c in results["configurations"]}
    assert set(rows) == {"temperature-1", "temperature-4"}
    baseline = {r["seed"]: r["miou"] for r in results["baseline"]["per_seed"]}
    assert sorted(baseline) == [0, 1]
    for row in rows.values():
        assert [r["seed"] for r in row["per_seed"]] == [0, 1]
        for r in row["per_seed"]:
            assert r["gain"] == pytest.approx(r["miou"] - baseline[r["seed"]])
        assert row["gain_ci95"] is not None and len(row["gain_ci95"]) == 2
    assert results["teacher_miou"] == pytest.approx(teacher.result["metrics"]["miou"])
    assert results["status"] == "succeeded"
    # stored with the parent's artifacts, as a local sweep writes it
    storage = make_storage(settings, settings.artifacts_bucket)
    stored = json.loads(storage.get_bytes(f"artifacts/{parent_id}/results.json"))
    assert stored["configurations"] == results["configurations"]
    # the analyses over the members' models: bias-variance over the seeds, the teacher's ECE
    assert results["analyses_error"] is None
    assert results["baseline"]["bias_variance"]["pixels"] > 0
    for row in rows.values():
        assert 0 <= row["bias_variance"]["bias"] <= 1
        assert 0 <= row["teacher_ece"] <= 1
    listed = {a["key"]: a["kind"] for a in parent["artifacts"]}
    assert listed[f"artifacts/{parent_id}/results.json"] == "results"
    assert listed[f"artifacts/{parent_id}/report/report.md"] == "report"
    assert f"artifacts/{parent_id}/report/gains.png" in listed
    _assert_samples(storage, parent_id, results, listed)
    # the comparison's wandb run (job type sweep): the table's numbers and the plots
    (run_key,) = [k for k in listed if k.startswith(f"artifacts/{parent_id}/compare/wandb/")]
    get_dir(storage, run_key, tmp_path / "sweep-run")
    run = read_offline_run(tmp_path / "sweep-run")
    assert run.job_type == "sweep" and run.exit_code == 0
    for name, row in rows.items():
        assert run.summary[f"{name}/gain_mean"] == pytest.approx(row["gain_mean"])
    assert any("report/gains" in f for f in run.files), run.files
    # `distillery results` prints the sweep's table, `status` its members
    runner = CliRunner(env={"COLUMNS": "200"})
    opts = ["--url", gateway_url, "--token", token]
    out = runner.invoke(app, ["results", parent_id, *opts], catch_exceptions=False).output
    assert "temperature-1" in out and "temperature-4" in out, out
    out = runner.invoke(app, ["status", parent_id, *opts], catch_exceptions=False).output
    assert "members: 7 succeeded" in out, out


def test_a_failed_shared_teacher_fails_only_its_children_and_the_parent_is_partial(
    settings, gateway_url, make_user, session_factory, start_worker, start_reconciler, tmp_path,
    poll,
):  # fmt: skip
    alice = _client(gateway_url, make_user("alice"))
    # this configuration's teacher differs (its own, shared by no one) and diverges
    diverging = {
        "teacher.losses": [{"kind": "cross_entropy", "weight": 1000.0}],
        "teacher.train": {
            "epochs": 3, "batch_size": 2, "max_steps_per_epoch": 4, "optimizer": "sgd", "lr": 10.0,
        },
    }  # fmt: skip
    spec = _sweep(
        "sweep-partial",
        tmp_path / "data",
        {
            "seeds": [0],
            "configurations": [
                {"name": "good", "overrides": {}},
                {"name": "bad-teacher", "overrides": diverging},
            ],
        },
    )
    body, parent = _run(alice, spec, start_worker, start_reconciler, poll)
    assert body["sweep"]["plan"]["stage_counts"]["teacher"] == [2, 2]
    assert parent["status"] == "partial", parent
    members = {(m["role"], m["configuration"]): m for m in parent["sweep"]["members"]}
    assert members[("child", "good")]["status"] == "succeeded"
    bad = members[("child", "bad-teacher")]
    assert bad["status"] == "failed"
    assert parent["sweep"]["counts"] == {"succeeded": 3, "failed": 2}
    with session_factory() as s:
        (distill,) = s.scalars(select(Stage).where(Stage.experiment_id == bad["id"])).all()
    assert distill.attempts == 0 and distill.error.startswith("not run: it needs stage teacher")
    rows = {c["name"]: c for c in parent["results"]["configurations"]}
    assert [r["seed"] for r in rows["good"]["per_seed"]] == [0]
    assert rows["bad-teacher"]["per_seed"] == []
    assert parent["results"]["status"] == "partial"


def test_a_child_retried_alone_reruns_the_comparison_which_then_has_its_row(
    settings, gateway_url, make_user, session_factory, start_worker, start_reconciler, tmp_path,
    poll,
):  # fmt: skip
    alice = _client(gateway_url, make_user("alice"))
    # this configuration's teacher is a checkpoint file that is not there yet
    late = tmp_path / "late" / "teacher.pt"
    spec = _sweep(
        "sweep-retry",
        tmp_path / "data",
        {
            "seeds": [0],
            "configurations": [
                {"name": "trained", "overrides": {}},
                {"name": "given", "overrides": {"teacher.model.checkpoint": str(late)}},
            ],
        },
    )
    body, parent = _run(alice, spec, start_worker, start_reconciler, poll)
    parent_id = body["id"]
    assert parent["status"] == "partial", parent
    members = {(m["role"], m["configuration"]): m for m in parent["sweep"]["members"]}
    given = members[("child", "given")]
    assert given["status"] == "failed"
    rows = {c["name"]: c for c in parent["results"]["configurations"]}
    assert rows["given"]["per_seed"] == [] and [r["seed"] for r in rows["trained"]["per_seed"]]
    with session_factory() as s:
        (compare,) = s.get(Experiment, parent_id).stages
        assert compare.attempts == 1

    # the cause removed: the checkpoint is there now (the sweep's trained teacher's model)
    (teacher,) = [m for m in parent["sweep"]["members"] if m["role"] == "teacher"]
    storage = make_storage(settings, settings.artifacts_bucket)
    late.parent.mkdir()
    storage.get_file(f"artifacts/{teacher['id']}/teacher/model.pt", late)
    r = alice.post(f"/experiments/{given['id']}/retry")
    assert r.status_code == 200, r.text
    assert alice.get(f"/experiments/{parent_id}").json()["status"] == "running"
    parent = _wait(alice, parent_id, poll, 300)
    assert parent["status"] == "succeeded", parent
    assert parent["sweep"]["counts"] == {"succeeded": 4}
    with session_factory() as s:
        (compare,) = s.get(Experiment, parent_id).stages
        (distill,) = s.get(Experiment, given["id"]).stages
        assert compare.attempts == 2
        assert compare.finished_at > distill.finished_at  # it compared after the retried child

    results = parent["results"]
    assert results["status"] == "succeeded"
    baseline = {r["seed"]: r["miou"] for r in results["baseline"]["per_seed"]}
    row = next(c for c in results["configurations"] if c["name"] == "given")
    assert row["failed"] == []
    (entry,) = row["per_seed"]
    assert entry["seed"] == 0
    assert entry["miou"] == pytest.approx(distill.result["metrics"]["miou"])
    assert entry["gain"] == pytest.approx(entry["miou"] - baseline[0])
    stored = json.loads(storage.get_bytes(f"artifacts/{parent_id}/results.json"))
    assert stored["configurations"] == results["configurations"]
    listed = {a["key"]: a["kind"] for a in parent["artifacts"]}
    _assert_samples(storage, parent_id, results, listed)


def test_compute_matched_baselines_train_as_long_as_each_distillation(
    settings, gateway_url, make_user, session_factory, start_worker, start_reconciler, tmp_path,
    poll,
):  # fmt: skip
    alice = _client(gateway_url, make_user("alice"))
    # the distillation (4 epochs, a teacher of width 32) takes several times as long as the
    # baseline (1 epoch, nothing else): its match needs more than 1 epoch
    four = {"epochs": 4, "batch_size": 2, "max_steps_per_epoch": 2}
    spec = _sweep(
        "sweep-matched",
        tmp_path / "data",
        {
            "seeds": [0, 1],
            "configurations": [{"name": "kd", "overrides": {"distillation.train": four}}],
            "compute_matched_baseline": True,
        },
    )
    spec["teacher"]["model"] = {"depth": 3, "width": 32}
    body, parent = _run(alice, spec, start_worker, start_reconciler, poll)
    assert parent["status"] == "succeeded", parent
    assert parent["sweep"]["counts"] == {"succeeded": 7}  # teacher, 2 baselines, 2 children, 2
    members = {(m["role"], m["seed"]): m for m in parent["sweep"]["members"]}
    storage = make_storage(settings, settings.artifacts_bucket)

    def stage(member: dict[str, Any]) -> tuple[Stage, dict[str, Any]]:
        """The member's training stage and its stored results (metrics, history)."""
        with session_factory() as s:
            (st,) = [x for x in s.get(Experiment, member["id"]).stages if x.name != "profile"]
        stored = storage.get_bytes(f"artifacts/{member['id']}/{st.name}/results.json")
        return st, json.loads(stored)

    def train_time(history: list[dict[str, Any]]) -> float:
        return sum(h["train"]["time_s"] for h in history)

    (row,) = parent["results"]["configurations"]
    matched = {r["seed"]: r for r in row["compute_matched"]["per_seed"]}
    assert sorted(matched) == [0, 1]
    for seed in (0, 1):
        distill, d_results = stage(members[("child", seed)])
        base, b_results = stage(members[("baseline", seed)])
        mine, m_results = stage(members[("matched", seed)])
        assert mine.name == "student" and mine.started_at >= distill.finished_at
        assert mine.started_at >= base.finished_at
        # epochs = max(1, round(epochs * t_distill / t_baseline)) from the recorded times
        ratio = train_time(d_results["history"]) / train_time(b_results["history"])
        epochs = max(1, round(spec["student"]["train"]["epochs"] * ratio))
        assert epochs > spec["student"]["train"]["epochs"] == 1
        assert mine.result["epochs"] == epochs == len(m_results["history"])
        assert matched[seed]["epochs"] == epochs
        assert matched[seed]["miou"] == pytest.approx(m_results["metrics"]["miou"])
        distilled = d_results["metrics"]["miou"]
        assert matched[seed]["gain"] == pytest.approx(distilled - m_results["metrics"]["miou"])
    parts = {p["seed"]: p for p in parent["results"]["parts"]["matched"]}  # listed as parts
    assert {s: (p["status"], p["epochs"]) for s, p in parts.items()} == {
        s: ("succeeded", matched[s]["epochs"]) for s in (0, 1)
    }
    assert {p["experiment_id"] for p in parts.values()} == {
        members[("matched", s)]["id"] for s in (0, 1)
    }
    gains = [matched[s]["gain"] for s in (0, 1)]
    assert row["compute_matched"]["gain_mean"] == pytest.approx(sum(gains) / 2)
    low, high = row["compute_matched"]["gain_ci95"]
    assert low <= sum(gains) / 2 <= high
    stored = json.loads(storage.get_bytes(f"artifacts/{body['id']}/results.json"))
    assert stored["configurations"][0]["compute_matched"] == row["compute_matched"]
