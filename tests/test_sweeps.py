"""Sweep expansion and the sharing plan (pure: no torch, nothing runs)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from distillery.spec import ExperimentSpec
from distillery.sweeps import (
    SweepError,
    content_hash,
    describe_plan,
    get_path,
    plan_sweep,
    set_path,
)

BASE = {
    "name": "sw",
    "seed": 7,
    "data": {
        "train": [{"format": "cityscapes", "root": "/d"}],
        "val": [{"format": "cityscapes", "root": "/d"}],
    },
    "distillation": {
        "losses": [{"kind": "cross_entropy"}, {"kind": "logit_kd", "temperature": 4.0}]
    },
}
ISSUE_SWEEP = {
    "seeds": [0, 1, 2],
    "grid": {"distillation.losses.1.temperature": [1, 4]},
    "configurations": [
        {
            "name": "bottleneck-mse",
            "overrides": {
                "distillation.losses": [
                    {"kind": "cross_entropy"},
                    {
                        "kind": "feature_mse",
                        "student_tap": "bottleneck",
                        "teacher_tap": "bottleneck",
                        "weight": 0.5,
                    },
                ]
            },
        },
        {
            "name": "dist",
            "overrides": {
                "distillation.losses": [{"kind": "dist", "weight": 1.0, "temperature": 1.0}]
            },
        },
    ],
}


def _spec(sweep: dict | None = None, **extra) -> ExperimentSpec:
    return ExperimentSpec.model_validate({**BASE, **extra, "sweep": sweep})


def test_paths() -> None:
    tree = {"a": {"b": [{"c": 1}, {"c": 2}]}}
    assert get_path(tree, "a.b.1.c") == 2
    new = set_path(tree, "a.b.0.c", 9)
    assert new["a"]["b"][0]["c"] == 9 and tree["a"]["b"][0]["c"] == 1  # a copy
    with pytest.raises(SweepError, match=r"'a\.b\.2\.c'.*a\.b has no '2' \(a list of 2"):
        get_path(tree, "a.b.2.c")
    with pytest.raises(SweepError, match=r"a has no 'x' \(keys: b\)"):
        set_path(tree, "a.x", 1)
    assert content_hash({"x": 1, "y": [1, 2]}) == content_hash({"y": [1, 2], "x": 1})
    assert content_hash({"x": 1}) != content_hash({"x": 2})


def test_the_issues_sweep_expands_to_4_children_x_3_seeds_sharing_teacher_and_baselines() -> None:
    plan = plan_sweep(_spec(ISSUE_SWEEP))
    names = [c.name for c in plan.configurations]
    assert names == ["temperature-1", "temperature-4", "bottleneck-mse", "dist"]
    assert len(plan.children) == 12
    t1 = next(c for c in plan.children if c.configuration == "temperature-1" and c.seed == 2)
    assert t1.spec.distillation.losses[1].temperature == 1 and t1.spec.seed == 2
    assert t1.spec.sweep is None and t1.spec.name == "sw.temperature-1.s2"
    dist = next(c for c in plan.children if c.configuration == "dist")
    assert [t.kind for t in dist.spec.distillation.losses] == ["dist"]
    # one teacher (the base seed 7) for all 12; one baseline per seed for all 4 recipes
    assert len(plan.teachers) == 1
    (teacher,) = plan.teachers.values()
    assert teacher.seed == 7 and teacher.spec.stages == ["teacher"] and len(teacher.used_by) == 12
    assert len(plan.baselines) == 3
    assert sorted(b.seed for b in plan.baselines.values()) == [0, 1, 2]
    assert all(
        len(b.used_by) == 4 and b.spec.stages == ["student"] for b in plan.baselines.values()
    )
    assert plan.stage_counts() == {"teacher": (1, 12), "student": (3, 12), "distill": (12, 12)}
    text = describe_plan(plan)
    assert "4 configurations x 3 seeds (0, 1, 2) = 12 children" in text
    assert "teacher 1 (of 12), student 3 (of 12), distill 12 (of 12)" in text
    assert plan.as_dict()["stage_counts"]["student"] == [3, 12]


def test_compute_matched_baselines_are_listed_and_counted_one_per_child() -> None:
    plan = plan_sweep(_spec({**ISSUE_SWEEP, "compute_matched_baseline": True}))
    assert plan.compute_matched and len(plan.matched) == 12
    assert plan.stage_counts() == {
        "teacher": (1, 12),
        "student": (3, 12),
        "distill": (12, 12),
        "matched": (12, 12),
    }
    as_dict = plan.as_dict()
    assert as_dict["compute_matched_baseline"] is True
    assert as_dict["stage_counts"]["matched"] == [12, 12]
    t1 = {"configuration": "temperature-1", "seed": 2}
    (row,) = [m for m in as_dict["matched"] if m.items() >= t1.items()]
    assert row["baseline"] == next(c.baseline_key for c in plan.children if c.seed == 2)
    text = describe_plan(plan)
    assert "compute-matched baselines: 12, one per child" in text
    assert "distill 12 (of 12), matched 12 (of 12)" in text
    plain = plan_sweep(_spec(ISSUE_SWEEP))  # without: nothing listed, no count
    assert plain.matched == [] and plain.as_dict()["matched"] == []
    assert "matched" not in plain.stage_counts() and "compute-matched" not in describe_plan(plain)


def test_a_teacher_override_makes_its_own_teacher() -> None:
    sweep = {
        "seeds": [0, 1],
        "configurations": [
            {"name": "plain"},
            {
                "name": "smooth",
                "overrides": {
                    "teacher.losses": [{"kind": "cross_entropy", "label_smoothing": 0.1}]
                },
            },
            {"name": "plain-T1", "overrides": {"distillation.losses.1.temperature": 1.0}},
        ],
    }
    plan = plan_sweep(_spec(sweep))
    assert len(plan.teachers) == 2 and len(plan.baselines) == 2
    keys = {c.configuration: c.teacher_key for c in plan.children}
    assert keys["plain"] == keys["plain-T1"] != keys["smooth"]
    # a student override changes the baselines too
    plan = plan_sweep(_spec({"seeds": [0], "grid": {"student.model.width": [4, 8]}}))
    assert len(plan.baselines) == 2 and len(plan.teachers) == 1


def test_a_given_teacher_checkpoint_is_not_trained_and_no_sweep_is_one_child() -> None:
    plan = plan_sweep(_spec({"seeds": [0, 1]}, teacher={"model": {"checkpoint": "/t.pt"}}))
    assert plan.teachers == {} and all(c.teacher_key is None for c in plan.children)
    plan = plan_sweep(_spec(None))
    assert [(c.configuration, c.seed) for c in plan.children] == [("base", 7)]


@pytest.mark.parametrize(
    ("sweep", "match"),
    [
        (
            {"grid": {"distillation.losses.5.temperature": [1]}},
            r"sweep\n.*grid: path 'distillation\.losses\.5\.temperature' does not exist",
        ),
        (
            {"grid": {"student.modle.width": [4]}},
            r"'student\.modle\.width' does not exist.*student has no 'modle'",
        ),
        (
            {"configurations": [{"name": "x", "overrides": {"teacher.train.lrr": 1}}]},
            r"configuration 'x'.*'teacher\.train\.lrr' does not exist",
        ),
        (
            {"grid": {"distillation.losses.1.temperature": [-1]}},
            r"(?s)configuration 'temperature--1'.*logit_kd.temperature: Input should be greater",
        ),
        (
            {"configurations": [{"name": "s", "overrides": {"seed": 3}}]},
            r"'seed' cannot be overridden",
        ),
        ({"configurations": [{"name": "a"}, {"name": "a"}]}, r"two configurations are named 'a'"),
        ({"seeds": [1, 1]}, r"seeds repeat"),
        ({"grid": {"seed": []}}, r"at least 1 item"),
    ],
)
def test_bad_sweeps_name_the_path(sweep: dict, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        _spec(sweep)


def test_a_sweep_needs_the_baseline_and_distill_stages() -> None:
    with pytest.raises(ValidationError, match="stages must include student and distill"):
        _spec({"seeds": [0]}, stages=["teacher", "distill"])


def test_the_example_research_sweep_plans_27_children_on_3_teachers_and_3_baselines() -> None:
    from pathlib import Path

    from distillery.spec import load_spec

    spec = load_spec(Path(__file__).parents[1] / "examples" / "research_sweep.yaml")
    plan = plan_sweep(spec)
    assert len(plan.configurations) == 9 and len(plan.children) == 27
    assert plan.stage_counts() == {"teacher": (3, 27), "student": (3, 27), "distill": (27, 27)}
    online = next(c for c in plan.children if c.configuration == "online-alternating")
    assert online.spec.distillation.mode == "online"
    assert online.spec.distillation.alternate.between == "models"


def test_a_sweep_spec_validates_and_plans_without_torch() -> None:
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys\n"
        "from distillery.spec import load_spec\n"
        "from distillery.sweeps import plan_sweep\n"
        "plan_sweep(load_spec('examples/research_sweep.yaml'))\n"
        "import distillery.research.summary, distillery.research.variance\n"
        "print('torch' in sys.modules)\n"
    )
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
