"""Spec bounds: numbers a shared platform can live with, strict types, short error messages,
feature taps checked against the named models, and all of it without torch."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest
from pydantic import ValidationError

from distillery.spec import ExperimentSpec, ModelSpec, format_validation_error, model_taps

DATA = {
    "train": [{"format": "cityscapes", "root": "a"}],
    "val": [{"format": "cityscapes", "root": "a"}],
}


def spec(**patch: Any) -> dict[str, Any]:
    return {"name": "x", "data": DATA, **patch}


def errors(raw: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as e:
        ExperimentSpec.model_validate(raw)
    return format_validation_error(e.value)


@pytest.mark.parametrize(
    ("patch", "field", "says"),
    [
        ({"student": {"train": {"epochs": 10**30}}}, "student.train.epochs", "10000"),
        ({"student": {"train": {"epochs": True}}}, "student.train.epochs", "valid integer"),
        ({"student": {"train": {"epochs": "5"}}}, "student.train.epochs", "valid integer"),
        ({"student": {"train": {"epochs": 2.0}}}, "student.train.epochs", "valid integer"),
        ({"student": {"train": {"lr": True}}}, "student.train.lr", "valid number"),
        ({"student": {"train": {"lr": 1e9}}}, "student.train.lr", "10"),
        ({"student": {"train": {"lr": float("nan")}}}, "student.train.lr", "finite"),
        ({"student": {"train": {"batch_size": 10**6}}}, "student.train.batch_size", "4096"),
        ({"teacher": {"train": {"num_processes": 10**4}}}, "teacher.train.num_processes", "64"),
        ({"teacher": {"model": {"width": 10**6}}}, "teacher.model.width", "256"),
        ({"teacher": {"model": {"depth": 7}}}, "teacher.model.depth", "6"),
        ({"teacher": {"model": {"separable": 1}}}, "teacher.model.separable", "valid boolean"),
        ({"data": {**DATA, "image_size": [100000, 100000]}}, "data.image_size.0", "4096"),
        ({"profiling": {"input_size": [64, 10**5]}}, "profiling.input_size.1", "4096"),
        ({"profiling": {"batch_sizes": [1] * 17}}, "profiling.batch_sizes", "at most 16"),
        ({"profiling": {"batch_sizes": [10**5]}}, "profiling.batch_sizes.0", "4096"),
        (
            {"distillation": {"losses": [{"kind": "logit_kd", "temperature": 1e6}]}},
            "distillation.losses.0.logit_kd.temperature",
            "100",
        ),
        (
            {"distillation": {"losses": [{"kind": "logit_kd", "weight": 1e9}]}},
            "distillation.losses.0.logit_kd.weight",
            "1000",
        ),
        ({"seed": -1}, "seed", "greater than or equal to 0"),
    ],
)
def test_bounds_and_strict_types(patch: dict, field: str, says: str) -> None:
    text = errors(spec(**patch))
    line = next((ln for ln in text.splitlines() if ln.strip().startswith(field)), None)
    assert line is not None, text
    assert says in line, line


def test_a_huge_batch_sizes_list_is_refused_fast() -> None:
    t0 = time.perf_counter()
    text = errors(spec(profiling={"batch_sizes": [1] * 25_000_000}))
    elapsed = time.perf_counter() - t0
    assert "profiling.batch_sizes" in text and "at most 16" in text
    assert elapsed < 20  # was 32 s to accept; a generous bound on a loaded machine


def test_errors_quote_only_a_short_prefix_of_a_bad_value() -> None:
    huge = "x" * 5_000_000
    text = errors(spec(student={"train": {"schedule": huge}}))
    assert "student.train.schedule" in text and len(text) < 500
    text = errors(spec(distillation={"losses": [{"kind": "channel_wise_kd", "tap": "y" * 60}]}))
    assert "distillation.losses.0.tap" in text and "y" * 60 not in text and "..." in text


def test_a_tap_the_model_lacks_names_the_field_and_lists_valid_taps() -> None:
    raw = spec(
        teacher={"model": {"depth": 2}},
        student={"model": {"depth": 2}},
        distillation={
            "losses": [
                {"kind": "cross_entropy"},
                {"kind": "feature_mse", "student_tap": "encoder.1", "teacher_tap": "encoder.99"},
            ]
        },
    )
    text = errors(raw)
    assert "distillation.losses.1.teacher_tap" in text and "'encoder.99'" in text
    assert "encoder.0, encoder.1, bottleneck, decoder.0, decoder.1, logits" in text
    # a tap deeper than the student's depth, on the student side
    raw["distillation"]["losses"][1] = {
        "kind": "attention_transfer",
        "student_tap": "encoder.3",
        "teacher_tap": "encoder.1",
    }
    assert "distillation.losses.1.student_tap: the student (depth 2)" in errors(raw)
    # channel_wise_kd reads its tap on both models
    raw["teacher"]["model"]["depth"] = 4
    raw["distillation"]["losses"][1] = {"kind": "channel_wise_kd", "tap": "encoder.3"}
    assert "the student (depth 2) has no tap 'encoder.3'" in errors(raw)
    raw["distillation"]["losses"][1] = {"kind": "channel_wise_kd", "tap": "encoder.1"}
    ExperimentSpec.model_validate(raw)


def test_online_teacher_terms_read_taps_with_roles_swapped() -> None:
    raw = spec(
        teacher={"model": {"depth": 4}},
        student={"model": {"depth": 2}},
        distillation={
            "mode": "online",
            "teacher_losses": [
                {"kind": "cross_entropy"},
                # the teacher learns: its own tap is `student_tap`, the student's is teacher_tap
                {"kind": "feature_mse", "student_tap": "encoder.3", "teacher_tap": "encoder.1"},
            ],
        },
    )
    ExperimentSpec.model_validate(raw)
    raw["distillation"]["teacher_losses"][1]["teacher_tap"] = "encoder.3"
    assert "teacher_losses.1.teacher_tap: the student (depth 2)" in errors(raw)


@pytest.mark.parametrize("depth", range(1, 7))
def test_tap_arithmetic_matches_the_built_model(depth: int) -> None:
    from distillery.models import build_model

    model_spec = ModelSpec(depth=depth, width=2)
    assert model_spec.tap_names() == build_model(model_spec).tap_names
    assert model_taps("unet", depth) == model_spec.tap_names()


def test_validating_a_spec_imports_no_torch() -> None:
    code = (
        "import sys; from distillery.spec import ExperimentSpec\n"
        "raw = {'name': 'x', 'data': {'train': [{'format': 'cityscapes', 'root': 'a'}],"
        " 'val': [{'format': 'cityscapes', 'root': 'a'}]},"
        " 'teacher': {'model': {'arch': 'unet'}, 'train': {'schedule': 'poly'}},"
        " 'distillation': {'losses': [{'kind': 'channel_wise_kd', 'tap': 'encoder.1'}]},"
        " 'profiling': {'variants': ['eager', 'bf16']}}\n"
        "ExperimentSpec.model_validate(raw)\n"
        "try:\n"
        "    ExperimentSpec.model_validate({**raw, 'distillation': {'losses': ["
        "{'kind': 'channel_wise_kd', 'tap': 'encoder.99'}]}})\n"
        "except ValueError:\n"
        "    pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_bounds_are_documented_in_the_json_schema() -> None:
    schema = ExperimentSpec.model_json_schema()
    train = schema["$defs"]["TrainSpec"]["properties"]
    assert train["epochs"]["maximum"] == 10_000 and train["num_processes"]["maximum"] == 64
    model = schema["$defs"]["ModelSpec"]["properties"]
    assert any(o.get("maximum") == 256 for o in model["width"]["anyOf"])


def test_a_sweep_grid_is_bounded_before_it_expands() -> None:
    grid = {"student.train.lr": [0.001 * (i + 1) for i in range(64)]}
    grid |= {"student.train.epochs": list(range(1, 65))}
    t0 = time.perf_counter()
    text = errors(spec(sweep={"grid": grid}))
    assert "more than 256 configurations" in text and time.perf_counter() - t0 < 5
