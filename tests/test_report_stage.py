"""The `report` stage kind: one module plus one registry line; writes Markdown + PNGs as
artifacts of kind `report` after the other stages."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from distillery.db import Artifact, make_engine, make_session_factory
from distillery.pipeline import run_local
from distillery.registry import STAGES
from distillery.spec import ExperimentSpec
from distillery.stages.plan import planned_kinds
from tests.support.wandb_runs import read_offline_run


def _spec(tmp_path: Path, stages: list[str], tracking: str = "disabled") -> ExperimentSpec:
    root = str(tmp_path / "cs")
    return ExperimentSpec.model_validate(
        {
            "name": "rep",
            "data": {
                "synthetic": {"num_train": 8, "num_val": 4, "image_size": [32, 64], "seed": 1},
                "train": [{"format": "cityscapes", "root": root}],
                "val": [{"format": "cityscapes", "root": root}],
                "image_size": [32, 64],
            },
            "teacher": {"model": {"depth": 2, "width": 8}, "train": {"epochs": 1, "batch_size": 4}},
            "student": {"model": {"depth": 2, "width": 4}, "train": {"epochs": 1, "batch_size": 4}},
            "profiling": {"input_size": [32, 64], "min_repeats": 2, "max_repeats": 3, "warmup": 1},
            "tracking": {"mode": tracking},
            "stages": stages,
        }
    )


def test_report_is_a_registered_kind_planned_only_when_asked(tmp_path: Path) -> None:
    per_experiment = [n for n in STAGES.in_order() if STAGES.get(n).level == "experiment"]
    assert per_experiment[-1] == "report"  # after it only sweep-level kinds (`compare`)
    assert "report" not in [k.name for k in planned_kinds(_spec(tmp_path, ["student"]))]
    kinds = planned_kinds(_spec(tmp_path, ["student", "report"]))
    assert [k.name for k in kinds] == ["student", "report"] and kinds[-1].queue == "profiler"


def test_the_report_stage_writes_markdown_and_plots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    spec = _spec(tmp_path, ["teacher", "student", "distill", "profile", "report"], "offline")
    run_dir = tmp_path / "run"
    results = run_local(spec, run_dir)
    exp = results["experiment_id"]
    folder = run_dir / "artifacts" / exp / "report"
    text = (folder / "report.md").read_text()
    assert f"# Experiment {exp}" in text and "| teacher |" in text
    for png in ("per_class_iou", "pareto", "samples"):
        assert (folder / f"{png}.png").read_bytes()[:4] == b"\x89PNG", png
        assert f"]({png}.png)" in text
    engine = make_engine(f"sqlite:///{run_dir / 'distillery.db'}")
    with make_session_factory(engine)() as s:
        keys = set(s.scalars(select(Artifact.key).where(Artifact.kind == "report")))
        runs_stored = set(s.scalars(select(Artifact.key).where(Artifact.kind == "wandb")))
    engine.dispose()
    assert f"artifacts/{exp}/report/report.md" in keys
    assert f"artifacts/{exp}/report/pareto.png" in keys

    # The report's own wandb run: the comparison table and every plot as an image.
    stored = [k for k in runs_stored if k.startswith(f"artifacts/{exp}/report/wandb/")]
    assert len(stored) == 1, runs_stored
    run = read_offline_run(run_dir / stored[0])  # the local storage root is the run folder
    assert run.job_type == "report" and run.exit_code == 0
    assert run.summary["distill/miou"] == results["rows"][-1]["miou"]
    logged = {k for row in run.history for k in row if k.startswith("report/")}
    assert logged == {"report/per_class_iou", "report/pareto", "report/samples"}
