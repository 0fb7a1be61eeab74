"""Whole-image inference: aspect-kept input sizes, padding to the model's multiple, logits at
the label's native size."""

from __future__ import annotations

import torch

from distillery.inference import input_hw, pad_to_multiple, same_size_runs, segment
from distillery.models import build_model
from distillery.spec import ModelSpec


def test_input_size_covers_the_size_asked_with_the_aspect_ratio_kept() -> None:
    assert input_hw((1024, 2048), (512, 1024)) == (512, 1024)  # Cityscapes 2:1
    assert input_hw((720, 1280), (512, 1024)) == (576, 1024)  # BDD100K 16:9
    assert input_hw((720, 1280), None) == (720, 1280)


def test_segment_pads_to_the_model_multiple_and_upsamples_to_the_label() -> None:
    model = build_model(ModelSpec(width=4, depth=2)).eval()  # inputs must divide by 4
    x = torch.randn(2, 3, 18, 30)
    assert pad_to_multiple(x, 4).shape[-2:] == (20, 32)
    with torch.inference_mode():
        logits = segment(model, x, (36, 60))
        padded = model(pad_to_multiple(x, 4))[..., :18, :30]
    assert logits.shape == (2, 19, 36, 60) and logits.dtype == torch.float32
    up = torch.nn.functional.interpolate(padded, size=(36, 60), mode="bilinear")
    assert torch.equal(logits, up)  # the padding's logits are cropped off before upsampling
    with torch.inference_mode():  # same size: the model's own logits, cropped
        assert torch.equal(segment(model, x, (18, 30)), padded.float())


def test_same_size_runs_group_consecutive_items_of_one_size() -> None:
    items = [
        {"image": torch.zeros(3, 2, 4), "mask": torch.zeros(4, 8)},
        {"image": torch.zeros(3, 2, 4), "mask": torch.zeros(4, 8)},
        {"image": torch.zeros(3, 3, 4), "mask": torch.zeros(6, 8)},
        {"image": torch.zeros(3, 2, 4), "mask": torch.zeros(4, 8)},
    ]
    assert [len(r) for r in same_size_runs(items)] == [2, 1, 1]
