"""`distillery profile CHECKPOINT|SPEC ...`."""

from __future__ import annotations

import json

import pytest
import typer
import yaml
from typer.testing import CliRunner

from distillery.cli import profile as profile_cli
from distillery.models import build_model
from distillery.models.checkpoint import save_model_checkpoint
from distillery.profiler import ProfileReport
from distillery.spec import ModelSpec

FAST = ["--warmup", "1", "--min-repeats", "3", "--max-repeats", "3"]


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()
    profile_cli.register(app)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps `profile` a subcommand
        pass

    return app


def run(app: typer.Typer, *args: str):
    return CliRunner().invoke(app, ["profile", *map(str, args)])


@pytest.fixture
def spec_file(tmp_path):
    spec = {
        "name": "cli-test",
        "data": {
            "train": [{"format": "cityscapes", "root": "/nowhere"}],
            "val": [{"format": "cityscapes", "root": "/nowhere"}],
        },
        "teacher": {"model": {"width": 8, "depth": 2}},
        "student": {"model": {"width": 4, "depth": 2}},
        "profiling": {"input_size": [32, 64], "latency_budget_ms": 10_000, "device": "cpu"},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_profile_a_spec_writes_json_and_markdown(app, spec_file, tmp_path):
    out, md = tmp_path / "out" / "profile.json", tmp_path / "report.md"
    result = run(
        app,
        spec_file,
        "--batch-sizes",
        "1,2",
        "--variants",
        "eager,channels_last",
        "--json",
        out,
        "--markdown",
        md,
        *FAST,
    )
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output and "★" in result.output
    report = ProfileReport.model_validate(json.loads(out.read_text()))
    assert report.model.source == "spec:student" and report.model.width == 4
    assert len(report.rows) == 4 and report.budget.verdict == "pass"
    assert "channels_last+fp32" in md.read_text()


def test_profile_the_teacher(app, spec_file, tmp_path):
    out = tmp_path / "t.json"
    result = run(app, spec_file, "--model", "teacher", "--json", out, *FAST)
    assert result.exit_code == 0, result.output
    assert ProfileReport.model_validate_json(out.read_text()).model.width == 8


def test_profile_a_checkpoint(app, tmp_path):
    spec = ModelSpec(width=4, depth=2)
    ckpt = save_model_checkpoint(tmp_path / "student.pt", build_model(spec), spec)
    out = tmp_path / "c.json"
    result = run(app, ckpt, "--input-size", "32x64", "--device", "cpu", "--json", out, *FAST)
    assert result.exit_code == 0, result.output
    report = ProfileReport.model_validate_json(out.read_text())
    assert report.model.source == str(ckpt) and report.input_size == (32, 64)


def test_wandb_mode_offline_logs_a_run(app, tmp_path, monkeypatch):
    from tests.support.wandb_runs import read_offline_run, read_offline_table

    monkeypatch.chdir(tmp_path)
    spec = ModelSpec(width=4, depth=2)
    ckpt = save_model_checkpoint(tmp_path / "student.pt", build_model(spec), spec)
    args = [ckpt, "--input-size", "32x64", "--device", "cpu", "--batch-sizes", "1,2", *FAST]
    result = run(app, *args)  # default: disabled, no run folder
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "wandb").exists() and "wandb run" not in result.output

    out = tmp_path / "runs"
    result = run(app, *args, "--wandb-mode", "offline", "--wandb-dir", out, "--wandb-group", "g")
    assert result.exit_code == 0, result.output
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    assert run_dir.name in result.output.replace("\n", "")
    logged = read_offline_run(run_dir)
    assert (logged.group, logged.job_type, logged.name) == ("g", "profile", "g-profile")
    assert logged.config["profiling"]["min_repeats"] == 3 and logged.config["threads"] >= 1
    for b in (1, 2):
        assert logged.summary[f"model/eager+fp32/b{b}/p50_ms"] > 0
        assert logged.summary[f"model/fastest/b{b}/variant"] == "eager+fp32"
    rows = read_offline_table(run_dir, "grid")
    assert [(r["model"], r["batch_size"], r["fastest"]) for r in rows] == [
        ("model", 1, "★"),
        ("model", 2, "★"),
    ]


def test_a_spec_with_an_auto_width_logs_the_search(app, spec_file, tmp_path):
    from tests.support.wandb_runs import read_offline_run, read_offline_table

    raw = yaml.safe_load(spec_file.read_text())
    raw["student"]["model"]["width"] = "auto"
    raw["profiling"]["auto_widths"] = [2, 4]
    spec_file.write_text(yaml.safe_dump(raw))
    out = tmp_path / "runs"
    result = run(app, spec_file, "--wandb-mode", "offline", "--wandb-dir", out, *FAST)
    assert result.exit_code == 0, result.output
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    logged = read_offline_run(run_dir)
    assert (logged.group, logged.name) == ("cli-test", "cli-test-profile")
    assert logged.summary["student/budget/verdict"] == "pass"
    assert logged.summary["chosen_width"] == 4
    assert [r["width"] for r in read_offline_table(run_dir, "width_search")] == [2, 4]


def test_errors_exit_2_with_a_message(app, spec_file, tmp_path):
    cases = [
        ([spec_file, "--input-size", "30x64"], "30x64 is not divisible by 4"),
        ([spec_file, "--input-size", "big"], "HEIGHTxWIDTH"),
        ([spec_file, "--variants", "tensorrt"], "unknown profiling variant"),
        ([spec_file, "--max-repeats", "0"], "max_repeats"),
        ([spec_file, "--wandb-mode", "cloud"], "--wandb-mode"),
        ([tmp_path / "model.onnx"], "TARGET must be"),
        ([tmp_path / "missing.pt"], "missing.pt: no such checkpoint"),
        ([tmp_path / "missing.yaml"], "missing.yaml: no such file"),
    ]
    for args, message in cases:
        result = run(app, *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)


def test_mismatching_checkpoint_names_the_file(app, tmp_path):
    import torch

    spec = ModelSpec(width=4, depth=2)
    ckpt = save_model_checkpoint(tmp_path / "bad.pt", build_model(spec), spec)
    raw = torch.load(ckpt)
    raw["width"] = 6
    torch.save(raw, ckpt)
    result = run(app, ckpt, "--input-size", "32x64")
    assert result.exit_code == 2 and "bad.pt" in result.output and "shape" in result.output


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu(app, spec_file):
    result = run(app, spec_file, "--device", "cuda")
    assert result.exit_code == 2 and "cuda" in result.output
