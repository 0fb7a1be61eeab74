"""What a distillation stage logs to wandb (offline): per-step losses, lr and throughput,
per-epoch scores, segmentations of fixed val images and teacher/student feature maps."""

from __future__ import annotations

from pathlib import Path

import pytest

from distillery.training import run_stage
from tests.support.wandb_runs import read_offline_run


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_distill_stage_logs_scalars_images_and_feature_maps(
    make_spec, teacher_model: Path, tmp_path: Path
) -> None:
    spec = make_spec(
        student={"train": {"epochs": 1, "max_steps_per_epoch": 2}},
        tracking={"mode": "offline", "log_images": True, "log_feature_maps": True},
    )
    result = run_stage(spec, "distill", tmp_path, teacher_path=teacher_model, tracker_group="g1")
    assert result.wandb_run is not None and result.wandb_run["url"] is None  # offline
    run = read_offline_run(Path(result.wandb_run["dir"]))
    assert run.run_id == result.wandb_run["id"]
    assert (run.group, run.job_type, run.name) == ("g1", "distill", "tiny-distill")
    assert run.config["stage"] == "distill" and run.config["student"]["model"]["width"] == 4

    keys = set().union(*(row.keys() for row in run.history))
    assert {"train/loss", "train/loss/cross_entropy", "train/loss/logit_kd"} <= keys
    assert {"train/lr", "train/images_per_s", "val/miou", "val/pixel_accuracy"} <= keys
    assert {"val/teacher_entropy", "val/entropy", "epoch/loss"} <= keys
    assert any(k.startswith("val/iou/") for k in keys)
    assert {"val/segmentation/0", "val/segmentation/3", "val/feature_maps"} <= keys
    steps = [row["_step"] for row in run.history if "train/loss" in row]
    assert steps == [1, 2]
    assert run.summary["final/miou"] == pytest.approx(result.metrics["miou"])
    assert run.exit_code == 0


def test_only_the_requested_media_are_logged(make_spec, tmp_path: Path) -> None:
    spec = make_spec(
        student={"train": {"epochs": 1, "max_steps_per_epoch": 1}},
        tracking={"mode": "offline", "log_images": False, "log_feature_maps": True},
    )
    result = run_stage(spec, "student", tmp_path)
    run = read_offline_run(Path(result.wandb_run["dir"]))
    keys = set().union(*(row.keys() for row in run.history))
    assert "val/feature_maps" in keys
    assert not any(k.startswith("val/segmentation") for k in keys)
