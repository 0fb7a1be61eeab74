"""`distillery run`: the whole pipeline on one machine with SQLite and a local folder."""

import json
from pathlib import Path

import yaml
from sqlalchemy import select
from typer.testing import CliRunner

from distillery.cli.main import app
from distillery.db import Experiment, Metric, StageStatus, make_engine, make_session_factory

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

    # Again: every stage is done, nothing is trained twice, same experiment.
    mtime = (art / "teacher" / "model.pt").stat().st_mtime_ns
    again = CliRunner().invoke(app, ["run", str(spec), "--run-dir", str(run_dir)])
    assert again.exit_code == 0, again.output
    assert json.loads((run_dir / "results.json").read_text())["experiment_id"] == exp_id
    assert (art / "teacher" / "model.pt").stat().st_mtime_ns == mtime


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
        tracking={"mode": "disabled"},
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
