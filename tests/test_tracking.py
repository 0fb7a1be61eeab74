"""Tracker against real wandb in offline mode: what it logs lands in the run folder."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distillery.spec import TrackingSpec
from distillery.tracking import Tracker, has_wandb_credentials
from tests.support.wandb_runs import read_offline_run

OFFLINE = TrackingSpec(mode="offline")


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")


def _tracker(run_dir: Path, spec: TrackingSpec = OFFLINE, **kw) -> Tracker:
    args = dict(
        name="exp-teacher",
        group="exp",
        config={"teacher": {"width": 8}, "seed": 0},
        job_type="teacher",
    )
    return Tracker(spec, run_dir, **(args | kw))


def test_metrics_images_and_feature_maps_reach_the_run_folder(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    tracker = _tracker(tmp_path / "run")
    t_init = time.perf_counter() - t0
    assert tracker.active and tracker.mode == "offline" and tracker.url is None
    assert tracker.run_dir is not None and tracker.run_dir.name.startswith("offline-run-")
    assert tracker.run_dir.is_relative_to(tmp_path / "run")

    for step in range(3):
        tracker.log({"train/loss": torch.tensor(1.0 / (step + 1)), "lr": np.float32(0.5)}, step)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 32, 3), dtype=np.uint8)
    gt = rng.integers(0, 19, (16, 32))
    gt[0] = 255
    tracker.log_segmentation("val/segmentation", image, gt, gt, step=3)
    tracker.log_feature_maps(
        "val/features",
        {"encoder.0": torch.randn(1, 8, 16, 32), "bottleneck": torch.randn(1, 16, 4, 8)},
        {"encoder.0": torch.randn(1, 4, 16, 32), "bottleneck": torch.randn(1, 8, 4, 8)},
        step=3,
    )
    tracker.summary({"best/miou": 0.42})
    t1 = time.perf_counter()
    tracker.finish()
    tracker.finish()  # idempotent
    print(f"wandb offline init {t_init:.2f}s, finish {time.perf_counter() - t1:.2f}s")
    assert not tracker.active

    run = read_offline_run(tracker.run_dir)
    assert run.run_id == tracker.run_id
    assert (run.group, run.job_type, run.name) == ("exp", "teacher", "exp-teacher")
    assert run.config == {"teacher": {"width": 8}, "seed": 0}
    losses = {r["_step"]: r["train/loss"] for r in run.history if "train/loss" in r}
    assert losses == pytest.approx({0: 1.0, 1: 0.5, 2: 1 / 3})
    assert run.summary["best/miou"] == 0.42
    assert run.exit_code == 0
    assert run.num_stats >= 1  # system metrics are on

    media = {r_key: r[r_key] for r in run.history for r_key in r if r_key.startswith("val/")}
    assert set(media) == {"val/segmentation", "val/segmentation/masks", "val/features"}
    panel = Image.open(tracker.run_dir / "files" / media["val/segmentation"]["path"])
    assert panel.size[0] == 3 * 32 + 4 and panel.size[1] > 16  # input | gt | prediction
    masks = media["val/segmentation/masks"]["masks"]
    assert set(masks) == {"ground_truth", "prediction"}
    mask = np.asarray(Image.open(tracker.run_dir / "files" / masks["ground_truth"]["path"]))
    np.testing.assert_array_equal(mask, gt)
    grid = Image.open(tracker.run_dir / "files" / media["val/features"]["path"])
    assert grid.size[0] > 4 * 32 and grid.size[1] > 2 * 16  # 4 columns, 2 taps
    assert len(list((tracker.run_dir / "files" / "media" / "images").rglob("*.png"))) >= 4


def test_runs_of_one_experiment_open_side_by_side(tmp_path: Path) -> None:
    a = _tracker(tmp_path / "teacher")
    b = _tracker(tmp_path / "student", job_type="student", name="exp-student")
    a.log({"x": 1.0}, step=0)
    b.log({"x": 2.0}, step=0)
    b.finish()
    a.finish()
    ra, rb = read_offline_run(a.run_dir), read_offline_run(b.run_dir)
    assert ra.run_id != rb.run_id and ra.group == rb.group == "exp"
    assert [r["x"] for r in ra.history] == [1.0] and [r["x"] for r in rb.history] == [2.0]


def test_failure_inside_context_marks_the_run_failed(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), _tracker(tmp_path / "run") as tracker:
        raise RuntimeError("boom")
    assert read_offline_run(tracker.run_dir).exit_code == 1


@pytest.mark.parametrize("how", ["disabled", "not-main-process"])
def test_disabled_writes_nothing(tmp_path: Path, how: str) -> None:
    spec = TrackingSpec(mode="disabled") if how == "disabled" else OFFLINE
    tracker = _tracker(tmp_path / "run", spec=spec, enabled=how != "not-main-process")
    tracker.log({"loss": 1.0}, step=0)
    tracker.log_segmentation(
        "seg", np.zeros((4, 8, 3), np.uint8), np.zeros((4, 8)), np.zeros((4, 8))
    )
    tracker.log_feature_maps("f", None, {"bottleneck": torch.randn(1, 4, 2, 2)})
    tracker.summary({"a": 1})
    tracker.finish()
    assert not tracker.active and tracker.mode == "disabled"
    assert tracker.run_dir is None and tracker.run_id is None and tracker.url is None
    assert not (tmp_path / "run").exists()


def test_image_flags_turn_media_off(tmp_path: Path) -> None:
    spec = TrackingSpec(mode="offline", log_images=False, log_feature_maps=False)
    tracker = _tracker(tmp_path / "run", spec=spec)
    assert not tracker.wants_images and not tracker.wants_feature_maps
    tracker.log_segmentation(
        "seg", np.zeros((4, 8, 3), np.uint8), np.zeros((4, 8)), np.zeros((4, 8)), step=0
    )
    tracker.log_feature_maps("f", None, {"bottleneck": torch.randn(1, 4, 2, 2)}, step=0)
    tracker.log({"loss": 1.0}, step=0)
    tracker.finish()
    run = read_offline_run(tracker.run_dir)
    assert not any(f.startswith("media/") for f in run.files)
    assert [k for k in run.history[0] if not k.startswith("_")] == ["loss"]


def _no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


def test_online_without_login_falls_back_to_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_credentials(monkeypatch, tmp_path)
    with pytest.warns(RuntimeWarning, match="WANDB_API_KEY"):
        tracker = _tracker(tmp_path / "run", spec=TrackingSpec(mode="online"))
    assert tracker.mode == "offline" and tracker.run_dir.name.startswith("offline-run-")
    tracker.log({"loss": 1.0}, step=0)
    tracker.finish()
    assert read_offline_run(tracker.run_dir).history[0]["loss"] == 1.0


def test_credentials_from_env_or_netrc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_credentials(monkeypatch, tmp_path)
    assert not has_wandb_credentials()
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {'a' * 40}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert has_wandb_credentials()
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.com")
    assert not has_wandb_credentials()  # the login is for another host
    monkeypatch.setenv("WANDB_API_KEY", "b" * 40)
    assert has_wandb_credentials()
