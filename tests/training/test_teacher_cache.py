"""Teacher outputs computed once and cut per crop (`distillation.teacher_cache`)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from distillery.data import DatasetError, TrainTransform, build_datasets, normalize
from distillery.data.teacher_maps import TeacherMaps
from distillery.inference import segment
from distillery.models.checkpoint import load_model_checkpoint, save_model_checkpoint
from distillery.spec import AugmentSpec, DataSpec
from distillery.training import Progress, StageHooks, run_stage
from distillery.training.teacher_cache import (
    MANIFEST,
    attach_teacher_cache,
    base_framing,
    ensure_teacher_cache,
    remove_abandoned,
)

NO_JITTER = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0}


def _data_spec(data_root: Path, **augment: object) -> DataSpec:
    ref = {"format": "cityscapes", "root": str(data_root)}
    return DataSpec.model_validate(
        {"train": [ref], "val": [ref], "image_size": [32, 64], "augment": augment}
    )


def _teacher(path: Path) -> torch.nn.Module:
    return load_model_checkpoint(path)[0].eval()


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.mark.parametrize("hw", [(32, 64), (48, 64), (20, 90)])
def test_a_map_of_the_image_is_cut_exactly_like_the_image(hw: tuple[int, int]) -> None:
    """The geometry alone: cutting the (normalised) image itself, at its native size, with a
    crop's geometry gives that crop (any scale, offset, padding and flip)."""
    tf = TrainTransform((32, 64), AugmentSpec(scale_range=(0.5, 2.0), **NO_JITTER))
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 256, (3, *hw), dtype=np.uint8))
    mask = torch.zeros(hw, dtype=torch.int64)
    seen = set()
    for seed in range(24):
        crop, _, geometry = tf.apply(image, mask, torch.Generator().manual_seed(seed))
        # the map of a mirrored crop is the mirror image's map mirrored back: the image itself
        cut = tf.cut(normalize(image), geometry)
        assert cut.shape == crop.shape
        torch.testing.assert_close(cut, crop, atol=1e-4, rtol=0)
        seen.add((geometry.flip, geometry.offset[0] < 0 or geometry.offset[1] < 0))
    assert len(seen) == 4  # flipped and not, padded and not


def test_the_cut_cached_map_equals_the_live_teacher_at_scale_1(
    data_root: Path, teacher_model: Path, tmp_path: Path
) -> None:
    """Scale 1 and no jitter: each item's cut teacher logits are the teacher's forward on the
    item's image, flipped or not (up to fp16)."""
    train, _ = build_datasets(_data_spec(data_root, scale_range=[1.0, 1.0], **NO_JITTER))
    teacher = _teacher(teacher_model)
    cache = ensure_teacher_cache(
        teacher, teacher_model, train.datasets, (32, 64), 1, tmp_path, batch_size=5
    )
    attach_teacher_cache(train.datasets, cache)
    flips = 0
    for i in range(len(train)):
        item = train[i]
        with torch.inference_mode():
            live = segment(teacher, item["image"][None], (32, 64))[0]
        assert item["teacher_logits"].dtype == torch.float16
        torch.testing.assert_close(item["teacher_logits"].float(), live, atol=2e-2, rtol=1e-2)
        base = base_framing(train.datasets[0], i, (32, 64))
        flips += int(torch.allclose(item["image"], base.flip(-1), atol=1e-5))
    assert 0 < flips < len(train)  # both entries of the cache were checked
    # at a coarser stride the map is an approximation, but still the teacher's
    coarse = ensure_teacher_cache(teacher, teacher_model, train.datasets, (32, 64), 2, tmp_path)
    assert coarse.key != cache.key
    attach_teacher_cache(train.datasets, coarse)
    item = train[0]
    with torch.inference_mode():
        live = segment(teacher, item["image"][None], (32, 64))[0]
    agree = (item["teacher_logits"].float().argmax(0) == live.argmax(0)).float().mean()
    assert agree > 0.8


def test_a_cache_is_computed_once_and_reused(
    data_root: Path, teacher_model: Path, tmp_path: Path
) -> None:
    train, _ = build_datasets(_data_spec(data_root))
    teacher = _teacher(teacher_model)
    forwards = []
    teacher.register_forward_hook(lambda *_: forwards.append(1))
    first = ensure_teacher_cache(teacher, teacher_model, train.datasets, (32, 64), 2, tmp_path)
    assert first.computed and len(forwards) == math.ceil(len(train) / 8)
    assert first.folder == tmp_path / first.key
    files = _files(first.folder)
    assert len([f for f in files if f.endswith(".npy")]) == len(train)
    maps = first.maps(0).load(3)
    assert maps.dtype == torch.float16 and tuple(maps.shape) == (2, 19, 16, 32)

    forwards.clear()
    again = ensure_teacher_cache(teacher, teacher_model, train.datasets, (32, 64), 2, tmp_path)
    assert not again.computed and again.folder == first.folder
    assert forwards == [] and _files(first.folder) == files  # nothing computed or rewritten

    # another teacher: another cache
    other = tmp_path / "other.pt"
    model, model_spec = load_model_checkpoint(teacher_model)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    save_model_checkpoint(other, model, model_spec)
    third = ensure_teacher_cache(model, other, train.datasets, (32, 64), 2, tmp_path)
    assert third.computed and third.key != first.key


_KILLED_PRECOMPUTE = """
import sys, time
from pathlib import Path
from distillery.data import build_datasets
from distillery.models.checkpoint import load_model_checkpoint
from distillery.spec import DataSpec
from distillery.training.teacher_cache import ensure_teacher_cache

data_root, teacher_file, root, marker = map(Path, sys.argv[1:])
ref = {"format": "cityscapes", "root": str(data_root)}
spec = DataSpec.model_validate({"train": [ref], "val": [ref], "image_size": [32, 64]})
train, _ = build_datasets(spec)
teacher = load_model_checkpoint(teacher_file)[0]

def on_image(done, total):
    marker.write_text(str(done))
    time.sleep(600)  # killed here, half-way

ensure_teacher_cache(teacher, teacher_file, train.datasets, (32, 64), 2, root, batch_size=4,
                     on_image=on_image)
"""


def test_a_killed_precompute_leaves_no_usable_cache(
    data_root: Path, teacher_model: Path, tmp_path: Path
) -> None:
    root, marker = tmp_path / "cache", tmp_path / "started"
    script = tmp_path / "precompute.py"
    script.write_text(textwrap.dedent(_KILLED_PRECOMPUTE))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(data_root), str(teacher_model), str(root), str(marker)]
    )
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert proc.poll() is None, "the precompute ended before it was killed"
            assert time.monotonic() < deadline, "the precompute never got going"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert marker.read_text() == "4"
    left = list(root.iterdir())
    assert len(left) == 1 and left[0].name.startswith(".tmp-")  # half-written, not in place
    assert len(list(left[0].rglob("*.npy"))) == 4 and not (left[0] / MANIFEST).exists()

    train, _ = build_datasets(_data_spec(data_root))
    cache = ensure_teacher_cache(
        _teacher(teacher_model), teacher_model, train.datasets, (32, 64), 2, root
    )
    assert cache.computed  # the half cache was not used
    assert [p.name for p in root.iterdir()] == [cache.key]  # and its folder was removed
    assert remove_abandoned(root) == []


def test_a_distill_stage_trains_from_the_cache_and_a_second_run_reuses_it(
    make_spec, teacher_model: Path, tmp_path: Path
) -> None:
    spec = make_spec(
        distillation={
            "losses": [{"kind": "cross_entropy"}, {"kind": "logit_kd", "temperature": 2.0}],
            "teacher_cache": {"enabled": True, "stride": 2},
        }
    )
    events: list[Progress] = []
    hooks = StageHooks(on_progress=events.append, teacher_cache_dir=tmp_path / "cache")
    first = run_stage(spec, "distill", tmp_path / "a", teacher_path=teacher_model, hooks=hooks)
    cache = first.runtime["teacher_cache"]
    assert cache["computed"] and Path(cache["folder"]).parent == tmp_path / "cache"
    assert math.isfinite(first.history[-1]["train"]["loss"])
    steps = [p for p in events if p.kind == "step"]
    assert steps and all(math.isfinite(p.metrics["loss"]) for p in steps)
    assert all(p.metrics["loss/logit_kd"] > 0 for p in steps)
    assert 0 <= first.metrics["miou"] <= 1 and 0 <= first.metrics["teacher_miou"] <= 1
    assert (tmp_path / "a" / "distill" / "result.json").is_file()

    second = run_stage(spec, "distill", tmp_path / "b", teacher_path=teacher_model, hooks=hooks)
    assert not second.runtime["teacher_cache"]["computed"]
    assert second.runtime["teacher_cache"]["key"] == cache["key"]
    # the same cached targets, the same seed: the same student
    a, b = (load_model_checkpoint(r.model_path)[0].state_dict() for r in (first, second))
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


@pytest.mark.slow
def test_two_processes_share_one_cache(make_spec, teacher_model: Path, tmp_path: Path) -> None:
    """Under `accelerate launch` the main rank computes the cache in the caller's folder, the
    other reads it; both ranks train to the same weights."""
    spec = make_spec(
        distillation={
            "losses": [{"kind": "logit_kd", "temperature": 2.0}],
            "teacher_cache": {"enabled": True, "stride": 2},
            "train": {"epochs": 1, "batch_size": 2, "num_processes": 2},
        }
    )
    hooks = StageHooks(teacher_cache_dir=tmp_path / "cache")
    result = run_stage(spec, "distill", tmp_path / "w", teacher_path=teacher_model, hooks=hooks)
    cache = result.runtime["teacher_cache"]
    assert cache["computed"] and [p.name for p in (tmp_path / "cache").iterdir()] == [cache["key"]]
    ranks = [
        json.loads((tmp_path / "w" / "distill" / "result" / f"rank-{r}.json").read_text())
        for r in (0, 1)
    ]
    assert ranks[0]["world_size"] == 2 and ranks[0]["state_hash"] == ranks[1]["state_hash"]
    assert math.isfinite(result.history[-1]["train"]["loss"])


def test_a_damaged_cache_file_is_an_error_naming_it(tmp_path: Path) -> None:
    folder = tmp_path / "0"
    folder.mkdir()
    np.save(folder / "0.npy", np.zeros((2, 19, 4, 8), dtype=np.float16))
    (folder / "1.npy").write_bytes(b"\x93NUMPY truncated")
    np.save(folder / "2.npy", np.zeros((19, 4, 8), dtype=np.float32))
    maps = TeacherMaps(folder, 3)
    assert tuple(maps.load(0).shape) == (2, 19, 4, 8)
    with pytest.raises(DatasetError, match=r"1\.npy: unreadable teacher cache file"):
        maps.load(1)
    with pytest.raises(DatasetError, match=r"2\.npy: expected fp16 \(2, C, h, w\)"):
        maps.load(2)
    with pytest.raises(IndexError, match="no image 3"):
        maps.load(3)
