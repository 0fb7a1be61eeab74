"""The seed analyses run real exported models over the validation split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from distillery.models import UNet
from distillery.models.checkpoint import save_model_checkpoint
from distillery.research.calibration import calibration
from distillery.research.predict import seeds_bias_variance, teacher_calibration
from distillery.research.variance import bias_variance
from distillery.spec import DataSpec, ModelSpec


def test_models_over_the_val_split(synthetic_data: dict[str, Path], tmp_path: Path) -> None:
    root = synthetic_data["cityscapes"]
    data = DataSpec.model_validate(
        {
            "train": [{"format": "cityscapes", "root": str(root)}],
            "val": [{"format": "cityscapes", "root": str(root)}],
        }
    )
    spec = ModelSpec(depth=2, width=4)
    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = UNet(num_classes=19, depth=2, width=4)
        paths.append(save_model_checkpoint(tmp_path / f"s{seed}.pt", model, spec))
    got = seeds_bias_variance(paths, data, batch_size=3)

    from distillery.data import build_datasets
    from distillery.models.checkpoint import load_model_checkpoint

    _, val = build_datasets(data)
    images = torch.stack([val[i]["image"] for i in range(len(val))])
    masks = torch.stack([val[i]["mask"] for i in range(len(val))]).numpy()
    models = [load_model_checkpoint(p)[0] for p in paths]
    with torch.inference_mode():
        preds = np.stack([m(images).argmax(1).numpy() for m in models])
        probs = models[0](images).softmax(1).numpy()
    want = bias_variance(preds, masks, 19, got.per_class.keys())
    for field in ("loss", "bias", "variance", "unbiased_variance", "biased_variance"):
        assert getattr(got, field) == pytest.approx(getattr(want, field), rel=1e-9), field
        for name, row in want.per_class.items():
            if row[field] is None:  # a class absent from the val split
                assert got.per_class[name][field] is None
            else:
                assert got.per_class[name][field] == pytest.approx(row[field], rel=1e-9), name
    assert got.pixels == int((masks != 255).sum()) and got.variance > 0
    cal = teacher_calibration(paths[0], data, batch_size=5)
    assert cal.ece == pytest.approx(calibration(probs, masks).ece, rel=1e-5)
