"""The `report` stage kind: one module plus one registry line; writes Markdown + PNGs as
artifacts of kind `report` after the other stages."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from distillery.db import Artifact, make_engine, make_session_factory
from distillery.pipeline import run_local
from distillery.registry import STAGES
from distillery.spec import ExperimentSpec
from distillery.stages.plan import planned_kinds


def _spec(tmp_path: Path, stages: list[str]) -> ExperimentSpec:
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
            "tracking": {"mode": "disabled"},
            "stages": stages,
        }
    )


def test_report_is_a_registered_kind_planned_only_when_asked(tmp_path: Path) -> None:
    per_experiment = [n for n in STAGES.in_order() if STAGES.get(n).level == "experiment"]
    assert per_experiment[-1] == "report"  # after it only sweep-level kinds (`compare`)
    assert "report" not in [k.name for k in planned_kinds(_spec(tmp_path, ["student"]))]
    kinds = planned_kinds(_spec(tmp_path, ["student", "report"]))
    assert [k.name for k in kinds] == ["student", "report"] and kinds[-1].queue == "profiler"


def test_the_report_stage_writes_markdown_and_plots(tmp_path: Path) -> None:
    spec = _spec(tmp_path, ["teacher", "student", "distill", "profile", "report"])
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
    engine.dispose()
    assert f"artifacts/{exp}/report/report.md" in keys
    assert f"artifacts/{exp}/report/pareto.png" in keys
