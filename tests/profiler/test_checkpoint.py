"""The exported-model format (distillery.models.checkpoint), as the profiler reads it."""

from __future__ import annotations

import pytest
import torch

from distillery.models import UNet, build_model
from distillery.models.checkpoint import (
    CheckpointError,
    load_model_checkpoint,
    save_model_checkpoint,
)
from distillery.spec import ModelSpec


def test_round_trip(tmp_path):
    spec = ModelSpec(width="auto", depth=2, separable=True, num_classes=5)
    model = build_model(spec, width=4).eval()
    path = save_model_checkpoint(tmp_path / "student.pt", model, spec)
    loaded, loaded_spec = load_model_checkpoint(path)
    assert loaded_spec.width == 4 and loaded_spec.separable and loaded_spec.num_classes == 5
    x = torch.randn(1, 3, 16, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    raw = torch.load(path, weights_only=True)
    assert set(raw) >= {"model_spec", "width", "state_dict"} and raw["width"] == 4


def test_compiled_model_is_saved_without_wrapper_prefixes(tmp_path):
    spec = ModelSpec(width=4, depth=2)
    model = build_model(spec)
    wrapped = torch.nn.Module()
    wrapped.module = model  # what DataParallel/DDP wrap it as
    path = save_model_checkpoint(tmp_path / "m.pt", wrapped, spec)
    assert all(not k.startswith("module.") for k in torch.load(path)["state_dict"])


def _tamper(path, **changes):
    raw = torch.load(path, weights_only=True)
    raw["model_spec"].update(changes)
    torch.save(raw, path)


def test_width_mismatch_names_the_file_and_shapes(tmp_path):
    spec = ModelSpec(width=4, depth=2)
    path = save_model_checkpoint(tmp_path / "w.pt", build_model(spec), spec)
    raw = torch.load(path, weights_only=True)
    raw["width"] = 8
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="w.pt") as e:
        load_model_checkpoint(path)
    msg = str(e.value)
    assert "shape mismatches" in msg and "encoder.0.0.weight: checkpoint (4, 3, 3, 3)" in msg


def test_depth_mismatch_names_missing_and_unexpected_keys(tmp_path):
    spec = ModelSpec(width=4, depth=2)
    path = save_model_checkpoint(tmp_path / "d.pt", build_model(spec), spec)
    _tamper(path, depth=3)
    with pytest.raises(CheckpointError, match=r"d\.pt.*missing keys: .*encoder\.2"):
        load_model_checkpoint(path)


def test_not_an_exported_model(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(UNet(width=4, depth=2).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"plain\.pt: not an exported model.*model_spec"):
        load_model_checkpoint(path)
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable"):
        load_model_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_model_checkpoint(tmp_path / "nope.pt")


def test_invalid_model_spec_in_file(tmp_path):
    spec = ModelSpec(width=4, depth=2)
    path = save_model_checkpoint(tmp_path / "s.pt", build_model(spec), spec)
    _tamper(path, arch="resnet")
    with pytest.raises(CheckpointError, match=r"s\.pt: invalid model_spec\n.*arch"):
        load_model_checkpoint(path)


def test_save_refuses_a_model_that_does_not_match_its_spec(tmp_path):
    with pytest.raises(ValueError, match="does not match model_spec"):
        save_model_checkpoint(tmp_path / "x.pt", UNet(width=4, depth=3), ModelSpec(depth=2))
