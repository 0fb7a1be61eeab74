"""The experiment spec: defaults, validation errors that name the field, no code in configs."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from distillery.spec import ExperimentSpec, SpecError, format_validation_error, load_spec

EXAMPLES = Path(__file__).parents[1] / "examples"
DATA = {
    "train": [{"format": "cityscapes", "root": "a"}],
    "val": [{"format": "bdd100k", "root": "b"}],
}


def _planned(spec: ExperimentSpec) -> list[str]:
    from distillery.stages.plan import planned_kinds

    return [k.name for k in planned_kinds(spec)]


def errors(raw: dict) -> str:
    with pytest.raises(ValidationError) as e:
        ExperimentSpec.model_validate(raw)
    return format_validation_error(e.value, raw)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_valid(path: Path) -> None:
    spec = load_spec(path)
    assert _planned(spec)[-1] == "profile"


def test_defaults_plan_all_stages() -> None:
    spec = ExperimentSpec.model_validate({"name": "x", "data": DATA})
    assert _planned(spec) == ["teacher", "student", "distill", "profile"]
    assert spec.distill_train == spec.student.train


def test_teacher_checkpoint_skips_teacher_training() -> None:
    spec = ExperimentSpec.model_validate(
        {"name": "x", "data": DATA, "teacher": {"model": {"checkpoint": "t.pt"}}}
    )
    assert _planned(spec) == ["student", "distill", "profile"]


def test_auto_width_plans_a_size_stage_and_needs_a_budget() -> None:
    raw = {"name": "x", "data": DATA, "student": {"model": {"width": "auto"}}}
    assert "latency_budget_ms" in errors(raw)
    raw["profiling"] = {"latency_budget_ms": 33}
    spec = ExperimentSpec.model_validate(raw)
    assert _planned(spec)[0] == "size"
    assert spec.with_student_width(12).student.model.width == 12


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"teacher": {"model": {"width": 0}}}, "teacher.model.width"),
        ({"teacher": {"model": {"arch": "resnet9000"}}}, "teacher.model.arch"),
        ({"student": {"train": {"epochs": 0}}}, "student.train.epochs"),
        ({"student": {"train": {"schedule": "cosine!"}}}, "student.train.schedule"),
        (
            {"distillation": {"losses": [{"kind": "logit_kd", "temperature": -1}]}},
            "distillation.losses.0.temperature",
        ),
        ({"distillation": {"losses": [{"kind": "eval"}]}}, "distillation.losses.0"),
        ({"teacher": {"losses": [{"kind": "logit_kd"}]}}, "teacher.losses"),
        ({"distillation": {"losses": [{"kind": "cross_entropy"}]}}, "distillation"),
        ({"tracking": {"mode": "loud"}}, "tracking.mode"),
        ({"typo_field": 1}, "typo_field"),
    ],
)
def test_errors_name_the_field(patch: dict, field: str) -> None:
    raw = {"name": "x", "data": DATA, **patch}
    assert field in errors(raw)


def test_image_size_must_fit_the_unet_depth() -> None:
    raw = {"name": "x", "data": {**DATA, "image_size": [60, 128]}}
    assert "data.image_size 60x128 must be divisible by 16" in errors(raw)


def test_dataset_ref_needs_exactly_one_location() -> None:
    raw = {"name": "x", "data": {**DATA, "val": [{"format": "cityscapes"}]}}
    assert "data.val.0" in errors(raw)


def test_yaml_tags_cannot_run_code(tmp_path: Path) -> None:
    bad = tmp_path / "evil.yaml"
    bad.write_text("name: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(SpecError, match="evil.yaml"):
        load_spec(bad)
    assert not Path("pwned").exists()


def test_load_spec_names_file_and_field(tmp_path: Path) -> None:
    p = tmp_path / "s.yaml"
    p.write_text("name: x\ndata: {train: [], val: []}\n")
    with pytest.raises(SpecError) as e:
        load_spec(p)
    assert "s.yaml" in str(e.value) and "data.train" in str(e.value)


@pytest.mark.parametrize(
    ("override", "field", "message"),
    [
        (
            {"student": {"model": {"width": 0}}},
            "student.model.width",
            "Input should be greater than or equal to 1, or 'auto'",
        ),
        (
            {"student": {"model": {"width": "wide"}}},
            "student.model.width",
            "Input should be a valid integer, or 'auto'",  # strict: "8" is not 8
        ),
        (
            {"distillation": {"losses": [{"kind": "logit_kd", "temperature": -1}]}},
            "distillation.losses.0.temperature",
            "Input should be greater than 0",
        ),
    ],
)
def test_union_errors_read_as_one_message_per_field(override, field, message) -> None:
    text = errors({"name": "x", "data": DATA, **override})
    assert text.splitlines() == [f"  {field}: {message}"]
    assert "constrained-int" not in text and "literal[" not in text and "logit_kd" not in text


def test_a_missing_field_inside_a_union_is_named() -> None:
    text = errors({"name": "x", "data": {"train": [{"format": "cityscapes"}], "val": []}})
    assert "data." in text and "constrained" not in text


CACHE = {"enabled": True, "stride": 2}
KD = {"kind": "logit_kd"}


@pytest.mark.parametrize(
    ("distillation", "expected"),
    [
        (
            {"mode": "online", "teacher_cache": CACHE},
            "distillation: Value error, teacher_cache.enabled: a teacher cache needs mode offline",
        ),
        (
            {
                "teacher_cache": CACHE,
                "losses": [
                    KD,
                    {
                        "kind": "feature_mse",
                        "student_tap": "bottleneck",
                        "teacher_tap": "bottleneck",
                    },
                ],
            },
            "teacher_cache.enabled: losses.1 (feature_mse) reads the teacher's features at "
            "'bottleneck'",
        ),
        (
            {
                "teacher_cache": CACHE,
                "losses": [
                    {
                        "kind": "attention_transfer",
                        "student_tap": "encoder.1",
                        "teacher_tap": "encoder.1",
                    }
                ],
            },
            "losses.0 (attention_transfer) reads the teacher's features",
        ),
        (
            {"teacher_cache": CACHE, "losses": [{"kind": "channel_wise_kd", "tap": "bottleneck"}]},
            "losses.0 (channel_wise_kd) reads the teacher's features",
        ),
        ({"teacher_cache": {"enabled": True, "stride": 0}}, "distillation.teacher_cache.stride"),
        ({"teacher_cache": {"enabled": True, "stride": 9}}, "distillation.teacher_cache.stride"),
        ({"teacher_cache": {"enabled": "yes"}}, "distillation.teacher_cache.enabled"),
        ({"teacher_cache": {"enabled": True, "dir": "/tmp"}}, "distillation.teacher_cache.dir"),
    ],
)
def test_teacher_cache_errors_name_the_field(distillation: dict, expected: str) -> None:
    assert expected in errors({"name": "x", "data": DATA, "distillation": distillation})


def test_teacher_cache_is_off_by_default_and_takes_logit_terms() -> None:
    spec = ExperimentSpec.model_validate({"name": "x", "data": DATA})
    assert not spec.distillation.teacher_cache.enabled
    cached = {
        "teacher_cache": CACHE,
        "losses": [
            {"kind": "cross_entropy"},
            KD,
            {"kind": "dist"},
            {"kind": "channel_wise_kd"},  # on the logits
        ],
    }
    spec = ExperimentSpec.model_validate({"name": "x", "data": DATA, "distillation": cached})
    assert spec.distillation.teacher_cache.stride == 2
