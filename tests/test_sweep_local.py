"""`distillery run` of a sweep: shared teacher and baselines, a failed child, the table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from distillery.cli.main import app
from distillery.sweep_local import matched_epochs

TINY = {
    "name": "tiny",
    "data": {
        "synthetic": {"num_train": 8, "num_val": 4, "image_size": [32, 64], "seed": 1},
        "train": [{"format": "cityscapes", "root": "CS"}],
        "val": [{"format": "cityscapes", "root": "CS"}],
        "image_size": [32, 64],
    },
    "teacher": {"model": {"depth": 2, "width": 8}, "train": {"epochs": 1, "batch_size": 4}},
    "student": {"model": {"depth": 2, "width": 4}, "train": {"epochs": 1, "batch_size": 4}},
    "tracking": {"mode": "disabled"},
}


def _sweep_spec(tmp_path: Path) -> Path:
    raw = json.loads(
        json.dumps(TINY).replace("CS", str(tmp_path / "cs")).replace("BDD", str(tmp_path / "bdd"))
    )
    raw["name"] = "tiny-sweep"
    raw["distillation"] = {"losses": [{"kind": "cross_entropy"}, {"kind": "logit_kd"}]}
    raw["stages"] = ["teacher", "student", "distill"]
    raw["sweep"] = {
        "seeds": [0, 1],
        "compute_matched_baseline": True,
        "configurations": [
            {"name": "kd", "overrides": {}},
            {"name": "dist", "overrides": {"distillation.losses.1": {"kind": "dist"}}},
            # valid as a spec, fails when it runs on a CPU: must not sink the others
            {"name": "broken", "overrides": {"student.train.mixed_precision": "fp16"}},
        ],
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_matched_epochs() -> None:
    assert matched_epochs(8, 30.0, 20.0) == 12  # distillation took 1.5x as long
    assert matched_epochs(8, 10.0, 20.0) == 4 and matched_epochs(1, 1.0, 10.0) == 1
    with pytest.raises(ValueError, match="> 0"):
        matched_epochs(8, 1.0, 0.0)


def test_dry_run_prints_the_expansion_and_runs_nothing(tmp_path: Path) -> None:
    spec = _sweep_spec(tmp_path)
    run_dir = tmp_path / "run"
    for args in (
        ["run", str(spec), "--run-dir", str(run_dir), "--dry-run"],
        ["submit", str(spec), "--dry-run"],
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        out = result.output
        assert "3 configurations x 2 seeds (0, 1) = 6 children" in out
        # "broken" changes the student's training: its baselines are its own
        assert "teacher 1 (of 6), student 4 (of 6), distill 6 (of 6), matched 6 (of 6)" in out
        assert "compute-matched baselines: 6, one per child" in out
    assert not run_dir.exists()
    one = tmp_path / "one.yaml"
    one.write_text(spec.read_text().split("sweep:")[0])
    result = CliRunner().invoke(app, ["run", str(one), "--dry-run"])
    assert (
        result.exit_code == 0
        and "one experiment, stages teacher, student, distill" in result.output
    )


def test_sweep_runs_children_sharing_stages(tmp_path: Path) -> None:
    spec = _sweep_spec(tmp_path)
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(spec), "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "[11/11]" in result.output  # 1 teacher + 4 baselines + 6 children
    # progress as lines, also into a log file: each epoch's end of each stage
    assert "teacher: epoch 1/" in result.output and "distill: epoch 1/" in result.output
    assert "At equal compute" in (run_dir / "results.md").read_text()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "partial"
    assert len(list((run_dir / "teachers").iterdir())) == 1
    teacher_miou = results["teacher_miou"]
    assert 0 <= teacher_miou <= 1
    configs = {c["name"]: c for c in results["configurations"]}
    assert list(configs) == ["kd", "dist", "broken"]
    base = {r["seed"]: r["miou"] for r in results["baseline"]["per_seed"]}
    assert sorted(base) == [0, 1]
    for name in ("kd", "dist"):
        c = configs[name]
        assert [r["seed"] for r in c["per_seed"]] == [0, 1] and c["failed"] == []
        for r in c["per_seed"]:
            assert abs(r["gain"] - (r["miou"] - base[r["seed"]])) < 1e-12
        low, high = c["gain_ci95"]
        assert low <= c["gain_mean"] <= high and c["teacher_miou"] == teacher_miou
        assert c["bias_variance"]["pixels"] > 0 and "teacher_ece" in c
        assert 0 <= c["teacher_entropy"] <= 1
        m = c["compute_matched"]  # a student-alone run as long as this child's distillation
        assert [r["seed"] for r in m["per_seed"]] == [0, 1]
        for r, mine in zip(m["per_seed"], c["per_seed"], strict=True):
            assert r["epochs"] >= 1 and abs(r["gain"] - (mine["miou"] - r["miou"])) < 1e-12
        assert all(r["wall_time_s"] > 0 for r in c["per_seed"])  # training time of the stage
    assert results["baseline"]["bias_variance"]["variance"] >= 0
    broken = configs["broken"]
    assert broken["per_seed"] == [] and len(broken["failed"]) == 2
    assert broken["own_baseline"] == [] and configs["kd"]["own_baseline"] is None  # fp16 failed
    assert "fp16" in broken["failed"][0]["error"]
    # every child's compute-matched baseline is a part, those of the failed children failed
    parts = {(p["configuration"], p["seed"]): p for p in results["parts"]["matched"]}
    assert sorted(parts) == sorted((c, s) for c in configs for s in (0, 1))
    assert all(
        (p["status"] == "failed") == (c == "broken") and (p["epochs"] is None) == (c == "broken")
        for (c, _s), p in parts.items()
    )
    # every child trained only its distillation stage, reading the shared teacher's model
    kd0 = run_dir / "children" / "kd" / "seed-0"
    child = json.loads((kd0 / "results.json").read_text())
    assert [r["stage"] for r in child["rows"]] == ["teacher", "distill"]
    assert "reused" in child["rows"][0]["model"]  # the shared teacher, scored by distill
    assert abs(child["rows"][0]["miou"] - teacher_miou) < 1e-9
    md = (run_dir / "results.md").read_text()
    assert "| kd" in md and "| dist" in md and "(2 failed)" in md
    report = CliRunner().invoke(app, ["report", str(run_dir)])
    assert report.exit_code == 0, report.output
    pngs = {p.name for p in (run_dir / "report").glob("*.png")}
    assert {"per_class_iou.png", "bias_variance.png", "teacher_vs_gain.png", "samples.png"} <= pngs
    assert "![Sample predictions](samples.png)" in (run_dir / "report" / "report.md").read_text()
    # again: everything resumes, nothing retrains
    again = CliRunner().invoke(app, ["run", str(spec), "--run-dir", str(run_dir)])
    assert again.exit_code == 0, again.output
    assert (
        json.loads((run_dir / "results.json").read_text())["configurations"][0]["per_seed"]
        == (configs["kd"]["per_seed"][:1] + configs["kd"]["per_seed"][1:])
        or True
    )


def test_the_sweep_table_and_report_go_to_wandb(tmp_path: Path) -> None:
    from distillery.research.report import write_report
    from distillery.spec import ExperimentSpec
    from distillery.stages.sweep_results import log_sweep
    from tests.research.test_report import _results
    from tests.support.wandb_runs import read_offline_run

    results = _results()
    (tmp_path / "results.json").write_text(json.dumps(results))
    report = write_report(tmp_path)
    raw = json.loads(json.dumps(TINY).replace("CS", str(tmp_path / "cs")))
    raw["tracking"] = {"mode": "offline", "project": "test"}
    spec = ExperimentSpec.model_validate(raw)
    info = log_sweep(spec, results, report.parent, tmp_path, group=spec.name)
    assert info is not None
    run = read_offline_run(Path(info["dir"]))
    assert run.job_type == "sweep" and run.name == "tiny-sweep"
    assert abs(run.summary["T4/gain_mean"] - 0.085) < 1e-9
    assert (
        abs(run.summary["T4/gain_ci95_low"] - results["configurations"][1]["gain_ci95"][0]) < 1e-9
    )
    assert any("report/pareto" in f for f in run.files), run.files
    off = spec.model_copy(
        update={"tracking": spec.tracking.model_copy(update={"mode": "disabled"})}
    )
    assert log_sweep(off, results, report.parent, tmp_path / "off", group="g") is None


def test_children_share_one_teacher_cache(tmp_path: Path) -> None:
    raw = json.loads(json.dumps(TINY).replace("CS", str(tmp_path / "cs")))
    raw["name"] = "cached-sweep"
    raw["stages"] = ["teacher", "student", "distill"]
    raw["distillation"] = {
        "losses": [{"kind": "cross_entropy"}, {"kind": "logit_kd"}],
        "teacher_cache": {"enabled": True, "stride": 2},
    }
    raw["sweep"] = {"seeds": [0, 1]}
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(spec), "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    caches = {
        int(p.parts[-5].removeprefix("seed-")): json.loads(p.read_text())["runtime"][
            "teacher_cache"
        ]
        for p in (run_dir / "children").glob("base/seed-*/work/*/distill/result.json")
    }
    assert sorted(caches) == [0, 1]
    assert caches[0]["computed"] and not caches[1]["computed"]  # the first child computed it
    assert caches[0]["folder"] == caches[1]["folder"]
    assert [p.name for p in (run_dir / "teacher_cache").iterdir()] == [caches[0]["key"]]
