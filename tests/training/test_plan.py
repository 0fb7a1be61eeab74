from __future__ import annotations

from pathlib import Path

import pytest

from distillery.spec import DatasetRef
from distillery.training import run_stage
from distillery.training.launcher import launch_command, with_local_roots
from distillery.training.plan import check_processes, plan_stage


def test_plan_picks_each_stage_settings(make_spec) -> None:
    spec = make_spec(
        teacher={"train": {"epochs": 5}},
        distillation={"mode": "online", "train": {"epochs": 7, "batch_size": 2}},
    )
    assert plan_stage(spec, "teacher").train.epochs == 5
    assert plan_stage(spec, "student").train.epochs == 2
    distill = plan_stage(spec, "distill")
    assert distill.online and distill.train.epochs == 7 and distill.model == spec.student.model
    assert [t.kind for t in distill.teacher_losses] == ["cross_entropy", "logit_kd"]


@pytest.mark.parametrize(
    ("overrides", "stage", "message"),
    [
        ({}, "profile", "not a training stage"),
        ({"distillation": {"mode": "online", "teacher_losses": []}}, "distill", "teacher_losses"),
        (
            {
                "distillation": {
                    "losses": [{"kind": "logit_kd"}],
                    "alternate": {"between": "objectives"},
                }
            },
            "distill",
            "no supervised term",
        ),
        (
            {"student": {"model": {"width": "auto"}}, "profiling": {"latency_budget_ms": 5}},
            "student",
            "with_student_width",
        ),
        ({"student": {"train": {"mixed_precision": "fp16"}}}, "student", "fp16 needs a CUDA"),
    ],
)
def test_bad_stage_settings_are_named(make_spec, tmp_path: Path, overrides, stage, message) -> None:
    import torch

    if "fp16" in message and torch.cuda.is_available():
        pytest.skip("fp16 is fine on a GPU")
    with pytest.raises(ValueError, match=message):
        run_stage(make_spec(**overrides), stage, tmp_path)
    assert not (tmp_path / stage / "ckpt").exists()


def test_launch_resolves_platform_datasets_and_names_the_entry_point(
    make_spec, tmp_path: Path
) -> None:
    spec = make_spec()
    data = spec.data.model_copy(
        update={"train": [DatasetRef(format="bdd100k", dataset_id="ds-1")], "synthetic": None}
    )
    spec = spec.model_copy(update={"data": data})
    local = with_local_roots(spec, lambda ref: tmp_path / ref.dataset_id)
    assert (
        local.data.train[0].root == str(tmp_path / "ds-1")
        and local.data.train[0].dataset_id is None
    )
    assert local.data.val == spec.data.val
    cmd = launch_command(
        num_processes=2,
        mixed_precision="no",
        port=1234,
        spec_path=tmp_path / "s.json",
        stage="distill",
        workdir=tmp_path,
        events_path=tmp_path / "e",
        teacher_path=tmp_path / "t.pt",
    )
    i = cmd.index("-m", 2)
    assert (
        cmd[1:3] == ["-m", "accelerate.commands.launch"]
        and cmd[i + 1] == "distillery.training.launch"
    )
    assert cmd[cmd.index("--num_processes") + 1] == "2" and "--multi_gpu" in cmd
    assert cmd[cmd.index("--teacher") + 1] == str(tmp_path / "t.pt")


def test_more_processes_than_visible_gpus_is_refused_before_launch() -> None:
    check_processes(2, visible_gpus=2)
    check_processes(4, visible_gpus=0)  # no CUDA: gloo processes on the CPU
    with pytest.raises(ValueError, match=r"train.num_processes 4 .* 2 GPUs"):
        check_processes(4, visible_gpus=2)
