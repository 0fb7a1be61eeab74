"""`distillery dataset ...` through typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from distillery.cli.main import app
from distillery.data import DatasetStats

runner = CliRunner()


def test_stats_json_and_plot(synthetic_data: dict[str, Path], tmp_path: Path) -> None:
    plot = tmp_path / "plots" / "stats.png"
    res = runner.invoke(
        app,
        [
            "dataset",
            "stats",
            str(synthetic_data["bdd100k"]),
            "--format",
            "bdd100k",
            "--split",
            "val",
            "--json",
            "--plot",
            str(plot),
        ],
    )
    assert res.exit_code == 0, res.output
    stats = DatasetStats.model_validate(json.loads(res.stdout))
    assert stats.num_images == 8 and stats.format == "bdd100k"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stats_table(synthetic_data: dict[str, Path]) -> None:
    res = runner.invoke(
        app, ["dataset", "stats", str(synthetic_data["cityscapes"]), "-f", "cityscapes"]
    )
    assert res.exit_code == 0, res.output
    assert "traffic light" in res.stdout and "median-freq w" in res.stdout


def test_generate_then_validate(tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        [
            "dataset",
            "generate",
            str(tmp_path),
            "--format",
            "cityscapes",
            "--num-train",
            "3",
            "--num-val",
            "2",
            "--size",
            "32x64",
            "--seed",
            "4",
        ],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["dataset", "validate", str(tmp_path), "-f", "cityscapes"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["images"] == 3


def test_errors_exit_nonzero_and_name_the_problem(tmp_path: Path) -> None:
    res = runner.invoke(app, ["dataset", "stats", str(tmp_path), "-f", "bdd100k"])
    assert res.exit_code == 1
    assert "split folder not found" in res.output and str(tmp_path) in res.output
    res = runner.invoke(
        app, ["dataset", "generate", str(tmp_path), "-f", "bdd100k", "--size", "64by128"]
    )
    assert res.exit_code != 0 and "HEIGHTxWIDTH" in res.output


def test_one_datasets_group_with_the_old_name_as_a_hidden_alias() -> None:
    res = runner.invoke(app, ["datasets", "--help"])
    assert res.exit_code == 0, res.output
    for command in ("generate", "stats", "validate", "upload", "register", "list"):
        assert f" {command} " in res.output, command
    top = runner.invoke(app, ["--help"]).output
    assert " datasets " in top and " dataset " not in top
    assert runner.invoke(app, ["dataset", "stats", "--help"]).exit_code == 0
