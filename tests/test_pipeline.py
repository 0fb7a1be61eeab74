"""`distillery run`: the whole pipeline on one machine with SQLite and a local folder."""

import json
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select
from typer.testing import CliRunner

from distillery.cli.main import app
from distillery.db import (
    Artifact,
    Experiment,
    Metric,
    StageStatus,
    make_engine,
    make_session_factory,
)
from tests.support.wandb_runs import read_offline_run, read_offline_table

TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {
        "synthetic": {"num_train": 8, "num_val": 4, "image_size": [32, 64], "seed": 1},
        "train": [{"format": "cityscapes", "root": "CS"}, {"format": "bdd100k", "root": "BDD"}],
        "val": [{"format": "cityscapes", "root": "CS"}],
        "image_size": [32, 64],
    },
    "teacher": {"model": {"depth": 2, "width": 8}, "train": {"epochs": 2, "batch_size": 4}},
    "student": {"model": {"depth": 2, "width": 4}, "train": {"epochs": 2, "batch_size": 4}},
    "distillation": {
        "losses": [
            {"kind": "cross_entropy"},
            {"kind": "logit_kd", "temperature": 2.0},
            {
                "kind": "feature_mse",
                "student_tap": "bottleneck",
                "teacher_tap": "bottleneck",
                "weight": 0.1,
            },
        ]
    },
    "profiling": {
        "input_size": [32, 64],
        "batch_sizes": [1],
        "min_repeats": 3,
        "max_repeats": 5,
        "warmup": 1,
    },
    "tracking": {"mode": "offline"},
}


def write_spec(tmp_path: Path, **overrides) -> Path:
    raw = json.loads(
        json.dumps(TINY).replace("CS", str(tmp_path / "cs")).replace("BDD", str(tmp_path / "bdd"))
    )
    raw.update(overrides)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def wandb_run(folder: Path) -> Path:
    """The one wandb run folder uploaded under `folder` (``<stage>/wandb/<run>``)."""
    (run_dir,) = (folder / "wandb").glob("offline-run-*")
    return run_dir


def test_run_end_to_end_then_resume(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(spec), "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "student (distilled)" in result.output and "Gap closed" in result.output

    results = json.loads((run_dir / "results.json").read_text())
    rows = {r["stage"]: r for r in results["rows"]}
    assert set(rows) == {"teacher", "student", "distill"}
    for r in rows.values():
        assert 0 <= r["miou"] <= 1 and r["params"] > 0 and r["gflops"] > 0
        assert r["latency_ms"] > 0
    assert rows["teacher"]["params"] > rows["student"]["params"] == rows["distill"]["params"]
    assert "gap closed" in (run_dir / "results.md").read_text().lower()

    exp_id = results["experiment_id"]
    art = run_dir / "artifacts" / exp_id
    for stage in ("teacher", "student", "distill"):
        assert (art / stage / "model.pt").is_file()
        (newest,) = (art / stage / "ckpt").iterdir()  # only the newest checkpoint is kept
        assert newest.name.startswith("step-") and list(newest.glob("*")), stage
        assert list((art / stage / "wandb").glob("*/*.wandb")), stage
    assert json.loads((art / "profile" / "profile.json").read_text())["student"]

    # wandb: every stage's run and the comparison, in the experiment's group
    group = f"tiny-{exp_id[:8]}"
    profile = read_offline_run(wandb_run(art / "profile"))
    assert (profile.group, profile.job_type, profile.exit_code) == (group, "profile", 0)
    assert read_offline_run(wandb_run(art / "teacher")).group == group
    assert profile.config["input_size"] == [32, 64] and profile.config["name"] == "tiny"
    for model in ("teacher", "student"):
        assert profile.summary[f"{model}/eager+fp32/b1/p50_ms"] > 0
        assert profile.summary[f"{model}/fastest/b1/variant"] == "eager+fp32"
    grid = read_offline_table(wandb_run(art / "profile"), "grid")
    assert [(r["model"], r["variant"], r["fastest"]) for r in grid] == [
        ("teacher", "eager+fp32", "★"),
        ("student", "eager+fp32", "★"),
    ]
    comparison_dir = wandb_run(art / "comparison")
    comparison = read_offline_run(comparison_dir)
    assert (comparison.group, comparison.job_type) == (group, "comparison")
    table = read_offline_table(comparison_dir, "comparison")
    assert [(r["stage"], r["miou"], r["latency_ms"]) for r in table] == [
        (r["stage"], pytest.approx(r["miou"]), pytest.approx(r["latency_ms"]))
        for r in results["rows"]
    ]

    sessions = make_session_factory(make_engine(f"sqlite:///{run_dir / 'distillery.db'}"))
    with sessions() as s:
        exp = s.get(Experiment, exp_id)
        assert exp.status == StageStatus.succeeded
        assert [st.name for st in exp.stages] == ["teacher", "student", "distill", "profile"]
        assert all(st.status == StageStatus.succeeded for st in exp.stages)
        epochs = s.execute(
            select(Metric.epoch)
            .join(Metric.stage)
            .where(Metric.stage.has(name="teacher"), Metric.stage.has(experiment_id=exp_id))
        ).all()
        assert sorted(e for (e,) in epochs) == [1, 2]
        wandb_keys = s.execute(
            select(Artifact.key).where(Artifact.experiment_id == exp_id, Artifact.kind == "wandb")
        ).scalars()
        assert {k.split("/")[2] for k in wandb_keys} == {
            "teacher",
            "student",
            "distill",
            "profile",
            "comparison",
        }
        assert exp.stages[-1].wandb["id"] == profile.run_id

    # Again: every stage is done, nothing is trained twice, same experiment.
    mtime = (art / "teacher" / "model.pt").stat().st_mtime_ns
    again = CliRunner().invoke(app, ["run", str(spec), "--run-dir", str(run_dir)])
    assert again.exit_code == 0, again.output
    assert json.loads((run_dir / "results.json").read_text())["experiment_id"] == exp_id
    assert (art / "teacher" / "model.pt").stat().st_mtime_ns == mtime
    assert wandb_run(art / "comparison") == comparison_dir  # logged once


def test_bad_spec_exits_with_the_field(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, teacher={"model": {"width": -3}})
    result = CliRunner().invoke(app, ["run", str(spec), "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "teacher.model.width" in result.output


def test_corrupt_image_fails_its_stage_naming_the_file(tmp_path: Path) -> None:
    from distillery.data import generate_synthetic

    cs = tmp_path / "cs"
    generate_synthetic(cs, "cityscapes", num_train=4, num_val=2, image_size=(32, 64), seed=0)
    victim = sorted((cs / "leftImg8bit" / "train").rglob("*.png"))[0]
    victim.write_bytes(b"not a png")
    raw = json.loads(json.dumps(TINY).replace("CS", str(cs)))
    raw["data"]["train"] = raw["data"]["val"] = [{"format": "cityscapes", "root": str(cs)}]
    raw["data"].pop("synthetic")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["run", str(path), "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert victim.name in result.output
    assert "teacher failed" in result.output


def test_auto_width_is_sized_before_the_student_trains(tmp_path: Path) -> None:
    """`student.model.width: auto` plans a `size` stage; the student trains at the chosen width."""
    spec = write_spec(
        tmp_path,
        student={"model": {"depth": 2, "width": "auto"}, "train": {"epochs": 1, "batch_size": 4}},
        stages=["student"],
        tracking={"mode": "offline", "log_images": False, "log_feature_maps": False},
    )
    raw = yaml.safe_load(spec.read_text())
    raw["profiling"].update(latency_budget_ms=60_000, auto_widths=[2, 4])
    spec.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(spec), "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    results = json.loads((run_dir / "results.json").read_text())
    assert results["student_width"] == 4  # the widest that fits a generous budget
    from distillery.models.checkpoint import load_model_checkpoint

    exp_id = results["experiment_id"]
    model, model_spec = load_model_checkpoint(
        run_dir / "artifacts" / exp_id / "student" / "model.pt"
    )
    assert model_spec.width == 4 and model.width == 4

    size_dir = wandb_run(run_dir / "artifacts" / exp_id / "size")
    size = read_offline_run(size_dir)
    assert (size.group, size.job_type) == (f"tiny-{exp_id[:8]}", "size")
    assert size.summary["chosen_width"] == 4 and size.summary["budget/verdict"] == "pass"
    rows = read_offline_table(size_dir, "width_search")
    assert [(r["width"], r["verdict"], r["chosen"]) for r in rows] == [
        (2, "pass", False),
        (4, "pass", True),
    ]
    assert all(r["latency_ms"] > 0 for r in rows)


def test_tracking_disabled_logs_nothing(tmp_path: Path) -> None:
    """`tracking.mode: disabled`: the stages and the comparison run and write no wandb runs."""
    spec = write_spec(
        tmp_path,
        student={"model": {"depth": 2, "width": "auto"}, "train": {"epochs": 1, "batch_size": 4}},
        stages=["student", "profile"],
        tracking={"mode": "disabled"},
    )
    raw = yaml.safe_load(spec.read_text())
    raw["profiling"].update(latency_budget_ms=60_000, auto_widths=[4])
    spec.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(spec), "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert json.loads((run_dir / "results.json").read_text())["rows"][0]["latency_ms"] > 0
    assert not list(run_dir.rglob("wandb"))


def test_a_width_search_that_misses_the_budget_logs_a_failed_size_run(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path,
        student={"model": {"depth": 2, "width": "auto"}, "train": {"epochs": 1, "batch_size": 4}},
        stages=["student"],
    )
    raw = yaml.safe_load(spec.read_text())
    raw["profiling"].update(latency_budget_ms=1e-6, auto_widths=[2, 4])
    spec.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(spec), "--run-dir", str(run_dir)])
    assert result.exit_code == 1 and "size failed" in result.output
    (size_dir,) = (run_dir / "artifacts").glob("*/size/wandb/offline-run-*")
    size = read_offline_run(size_dir)
    assert size.job_type == "size" and size.exit_code == 1
    assert size.summary["budget/verdict"] == "fail" and "chosen_width" not in size.summary
    rows = read_offline_table(size_dir, "width_search")
    assert [(r["width"], r["verdict"]) for r in rows] == [(2, "fail"), (4, "skipped")]


def test_run_piped_to_a_log_prints_a_line_per_epoch_as_it_goes(tmp_path: Path) -> None:
    """`distillery run SPEC | tee log`: each epoch's line arrives while the run goes on."""
    import os
    import subprocess
    import sys

    spec = write_spec(tmp_path, stages=["teacher", "student"])
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true")
    code = "from distillery.cli.main import app; app()"
    cmd = [sys.executable, "-c", code, "run", str(spec), "--run-dir", str(tmp_path / "r")]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    lines, running_at_first_epoch = [], None
    try:
        for line in proc.stdout:
            lines.append(line.rstrip())
            if running_at_first_epoch is None and line.startswith("teacher: epoch 1/2"):
                running_at_first_epoch = proc.poll() is None
        assert proc.wait(timeout=300) == 0, "\n".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert running_at_first_epoch, "\n".join(lines)
    epochs = [ln.split("  ")[0] for ln in lines if ": epoch " in ln]
    expected = [f"{s}: epoch {e}/2" for s in ("teacher", "student") for e in (1, 2)]
    assert epochs == expected, "\n".join(lines)
    assert all("mIoU" in ln for ln in lines if ": epoch " in ln)
    table = next(i for i, ln in enumerate(lines) if ln.strip() == "Results")
    assert not any("━" in ln for ln in lines[:table])  # no progress bars before the table
