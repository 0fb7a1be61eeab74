"""The gateway client commands (`distillery submit`, `list`, ...) against uvicorn."""

from __future__ import annotations

import yaml
from sqlalchemy import select
from typer.testing import CliRunner

from distillery.cli.main import app
from distillery.db import Experiment, Stage, StageStatus

SPEC = {
    "name": "cli-exp",
    "data": {
        "train": [{"format": "cityscapes", "root": "/data/cs"}],
        "val": [{"format": "cityscapes", "root": "/data/cs"}],
    },
    "teacher": {"model": {"width": 8, "depth": 2}},
    "student": {"model": {"width": 4, "depth": 2}},
}


def cli(*args: str, env: dict[str, str] | None = None):
    runner = CliRunner(env={"COLUMNS": "200", **(env or {})})
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_cli_against_the_gateway(gateway_url, make_user, tmp_path, session_factory):
    token = make_user("carol")
    opts = ["--url", gateway_url, "--token", token]
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))

    r = cli("submit", str(spec_path), *opts)
    assert r.exit_code == 0, r.output
    assert "teacher → student → distill → profile" in r.output
    r = cli("submit", str(spec_path), "-q", *opts)
    exp_id = r.stdout.strip()
    assert len(exp_id) == 32, r.output

    r = cli("list", *opts)
    assert r.exit_code == 0 and exp_id in r.output and "carol" in r.output
    assert "experiments 1-2 of 2" in r.output
    r = cli("list", "--status", "succeeded", *opts)
    assert r.exit_code == 0 and exp_id not in r.output

    r = cli("status", exp_id, *opts)
    assert r.exit_code == 0, r.output
    for stage in ("teacher", "student", "distill", "profile"):
        assert stage in r.output
    assert "queued" in r.output

    r = cli("queue", *opts)
    assert r.exit_code == 0 and "cli-exp" in r.output and "carol" in r.output
    assert "0 running, 2 queued" in r.output

    r = cli("results", exp_id, *opts)
    assert r.exit_code == 1 and "no results yet" in r.output

    r = cli("cancel", exp_id, *opts)
    assert r.exit_code == 0 and f"{exp_id}: cancelled" in r.output
    r = cli("cancel", exp_id, *opts)
    assert r.exit_code == 1 and "HTTP 409" in r.output
    r = cli("retry", exp_id, *opts)  # a cancelled experiment is queued again
    assert r.exit_code == 0, r.output
    assert f"{exp_id}: queued; queued again: teacher, student, distill, profile" in r.output
    r = cli("cancel", exp_id, *opts)
    assert r.exit_code == 0 and f"{exp_id}: cancelled" in r.output

    # Through the environment instead of flags.
    r = cli("delete", exp_id, env={"DISTILLERY_URL": gateway_url, "DISTILLERY_TOKEN": token})
    assert r.exit_code == 0 and f"deleted {exp_id}" in r.output
    r = cli("status", exp_id, *opts)
    assert r.exit_code == 1 and "HTTP 404" in r.output


def test_cli_errors_are_readable_and_nonzero(gateway_url, make_user, tmp_path):
    token = make_user("dave")
    bad = dict(SPEC, teacher={"train": {"lr": -1}, "model": {"widht": 3}})
    spec_path = tmp_path / "bad.yaml"
    spec_path.write_text(yaml.safe_dump(bad))
    r = cli("submit", str(spec_path), "--url", gateway_url, "--token", token)
    assert r.exit_code == 1
    assert "HTTP 422" in r.output
    assert "teacher.train.lr: Input should be greater than 0" in r.output
    assert "teacher.model.widht: Extra inputs are not permitted" in r.output

    r = cli("list", "--url", gateway_url)  # no token
    assert r.exit_code == 2 and "DISTILLERY_TOKEN" in r.output
    r = cli("list", "--url", gateway_url, "--token", "wrong")
    assert r.exit_code == 1 and "HTTP 401" in r.output and "unknown token" in r.output
    r = cli("list", "--url", "http://127.0.0.1:9", "--token", token)
    assert r.exit_code == 1 and "cannot reach the gateway" in r.output
    r = cli("submit", str(tmp_path / "missing.yaml"), "--url", gateway_url, "--token", token)
    assert r.exit_code == 1 and "no such file" in r.output


def test_cli_watch_and_results_of_a_finished_experiment(
    gateway_url, make_user, tmp_path, session_factory
):
    token = make_user("erin")
    opts = ["--url", gateway_url, "--token", token]
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    exp_id = cli("submit", str(spec_path), "-q", *opts).stdout.strip()
    with session_factory() as s:
        for st in s.scalars(select(Stage).where(Stage.experiment_id == exp_id)):
            st.status, st.epoch, st.epochs, st.step, st.steps = StageStatus.succeeded, 2, 2, 5, 5
        exp = s.get(Experiment, exp_id)
        exp.status = StageStatus.succeeded
        exp.results = {
            "rows": [
                {
                    "stage": "teacher",
                    "model": "teacher",
                    "miou": 0.61,
                    "params": 2e6,
                    "gflops": 1.5,
                    "latency_ms": 9.0,
                    "gain_over_baseline": 0.2,
                },
                {
                    "stage": "student",
                    "model": "student (baseline)",
                    "miou": 0.41,
                    "params": 1e5,
                    "gflops": 0.1,
                    "latency_ms": 1.0,
                    "gain_over_baseline": 0.0,
                },
                {
                    "stage": "distill",
                    "model": "student (distilled)",
                    "miou": 0.5,
                    "params": 1e5,
                    "gflops": 0.1,
                    "latency_ms": 1.0,
                    "gain_over_baseline": 0.09,
                },
            ],
            "gap_closed": 0.45,
        }
        s.commit()
    r = cli("status", exp_id, "--watch", "--interval", "0.1", *opts)
    assert r.exit_code == 0, r.output
    assert "succeeded" in r.output

    r = cli("results", exp_id, *opts)
    assert r.exit_code == 0, r.output
    assert "student (distilled)" in r.output and "61.0" in r.output and "+9.0" in r.output
    assert "Gap closed by distillation: 45%" in r.output
    # One results table (its caption says what the numbers mean), not a line per number.
    assert r.output.count("Results") == 1 and "results:" not in r.output

    r = cli("report", exp_id, "--out", str(tmp_path / "rep"), *opts)
    assert r.exit_code == 0, r.output
    text = (tmp_path / "rep" / "report.md").read_text()
    assert f"# Experiment {exp_id}" in text and "| teacher | 61.0 |" in text


def test_cli_watch_follows_progress_until_the_end(
    gateway_url, make_user, tmp_path, session_factory
):
    """`status --watch` polls while a (simulated) worker advances, and exits 1 on failure."""
    import threading
    import time

    token = make_user("gina")
    opts = ["--url", gateway_url, "--token", token]
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(dict(SPEC, stages=["student"])))
    exp_id = cli("submit", str(spec_path), "-q", *opts).stdout.strip()

    def worker() -> None:
        with session_factory() as s:
            st = s.scalar(select(Stage).where(Stage.experiment_id == exp_id))
            exp = s.get(Experiment, exp_id)
            for step in range(1, 4):
                st.status, exp.status = StageStatus.running, StageStatus.running
                st.epoch, st.epochs, st.step, st.steps = 1, 1, step, 3
                s.commit()
                time.sleep(0.3)
            st.status, st.error = StageStatus.failed, OOM
            exp.status = StageStatus.failed
            s.commit()

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        r = cli("status", exp_id, "--watch", "--interval", "0.1", *opts)
    finally:
        thread.join()
    assert r.exit_code == 1, r.output
    assert "failed" in r.output
    assert f"student: {OOM}" in r.output  # the whole error, on its own line


OOM = (
    "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.77 GiB total "
    "capacity; 13.20 GiB already allocated; 1.10 GiB free; 13.90 GiB reserved in total)"
)


def test_cli_datasets_upload_waits_for_the_check_and_list(
    gateway_url, make_user, cityscapes_dir, checker
):
    token = make_user("frank")
    opts = ["--url", gateway_url, "--token", token]
    r = cli(
        "datasets",
        "upload",
        str(cityscapes_dir),
        "--name",
        "cs-cli",
        "--format",
        "cityscapes",
        *opts,
    )
    assert r.exit_code == 0, r.output
    assert "cs-cli (cityscapes) ready" in r.output and "train: 3, val: 2 images" in r.output
    r = cli("datasets", "list", *opts)
    assert r.exit_code == 0 and "cs-cli" in r.output and "train:3 val:2" in r.output

    (cityscapes_dir / "gtFine").rename(cityscapes_dir / "labels")
    r = cli(
        "datasets",
        "upload",
        str(cityscapes_dir),
        "--name",
        "broken",
        "--format",
        "cityscapes",
        *opts,
    )
    assert r.exit_code == 1, r.output
    assert "broken (cityscapes) invalid" in r.output
    assert "invalid: " in r.output and "leftImg8bit/train" in r.output  # the whole error

    r = cli(
        "datasets",
        "upload",
        str(cityscapes_dir),
        "--name",
        "later",
        "--format",
        "cityscapes",
        "--no-wait",
        *opts,
    )
    assert r.exit_code == 0 and "later (cityscapes) checking" in r.output, r.output


def test_polling_sends_the_etag_and_reuses_the_answer_on_304(
    gateway_url, make_user, tmp_path, session_factory
):
    """What `status --watch` does each poll: `If-None-Match`, and a 304 costs no body."""
    from distillery.cli.client import Gateway

    token = make_user("hana")
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    exp_id = cli("submit", str(spec_path), "-q", "--url", gateway_url, "--token", token)
    exp_id = exp_id.stdout.strip()

    gw = Gateway(gateway_url, token)
    statuses: list[int] = []
    gw.http.event_hooks["response"].append(lambda r: statuses.append(r.status_code))
    path = f"/experiments/{exp_id}"
    first = gw.get_fresh(path)
    second = gw.get_fresh(path)
    assert statuses == [200, 304] and second == first
    with session_factory() as s:
        stage = s.scalar(select(Stage).where(Stage.experiment_id == exp_id, Stage.position == 0))
        stage.status, stage.step, stage.steps = StageStatus.running, 2, 10
        s.commit()
    third = gw.get_fresh(path)
    assert statuses == [200, 304, 200]
    assert third["stages"][0]["step"] == 2 and third["stages"][0]["status"] == "running"
    assert gw.get_fresh(path) == third and statuses[-1] == 304


def test_cli_share_lists_adds_and_takes_back(gateway_url, make_user, tmp_path):
    token = make_user("dana")
    make_user("erin")
    opts = ["--url", gateway_url, "--token", token]
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    exp_id = cli("submit", str(spec_path), "-q", *opts).stdout.strip()

    r = cli("share", exp_id, *opts)
    assert r.exit_code == 0 and f"{exp_id}: shared with nobody" in r.output
    r = cli("share", exp_id, "erin", *opts)
    assert r.exit_code == 0 and "shared with erin" in r.output, r.output
    r = cli("share", exp_id, "nobody-here", *opts)
    assert r.exit_code == 1 and "no user 'nobody-here'" in r.output
    r = cli("share", exp_id, "erin", "--remove", *opts)
    assert r.exit_code == 0 and "shared with nobody" in r.output


def test_cli_submits_a_sweep_and_shows_its_members(gateway_url, make_user, tmp_path):
    token = make_user("erin")
    opts = ["--url", gateway_url, "--token", token]
    spec = dict(
        SPEC,
        name="cli-sweep",
        stages=["teacher", "student", "distill"],
        sweep={"seeds": [0, 1], "grid": {"distillation.losses.1.temperature": [1, 4]}},
    )
    spec_path = tmp_path / "sweep.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    r = cli("submit", str(spec_path), *opts)
    assert r.exit_code == 0, r.output
    assert "submitted sweep" in r.output and "7 member experiments" in r.output
    assert "teacher 1 (of 4), student 2 (of 4), distill 4 (of 4)" in r.output
    parent_id = r.output.split("submitted sweep ")[1].split()[0]

    r = cli("status", parent_id, *opts)
    assert r.exit_code == 0, r.output
    assert "compare" in r.output and "members: 7 queued" in r.output
    for part in ("child temperature-1 seed 0", "child temperature-4 seed 1", "shared teacher"):
        assert part in r.output, part
    r = cli("list", "--owner", "erin", *opts)  # the sweep as one row
    assert r.exit_code == 0 and "of 1" in r.output and parent_id[:8] in r.output, r.output
    r = cli("list", "--owner", "erin", "--members", *opts)
    assert r.exit_code == 0 and "of 8" in r.output, r.output
    r = cli("cancel", parent_id, *opts)
    assert r.exit_code == 0, r.output
    r = cli("status", parent_id, *opts)
    assert "members: 7 cancelled" in r.output, r.output
