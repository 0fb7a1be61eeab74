"""`distillery predict` + `distillery evaluate` reproduce the val mIoU a training run reports,
with Cityscapes (2:1) and BDD100K (16:9) images mixed in one validation set, scored at the
labels' native resolution (not at the training crop size)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from distillery.cli.main import app
from distillery.data.synthetic import generate_synthetic
from distillery.evaluate import evaluate_predictions
from distillery.metrics import ConfusionMatrix
from distillery.spec import ExperimentSpec
from distillery.training import run_stage

CS_HW, BDD_HW = (64, 128), (72, 128)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, dict]:
    base = tmp_path_factory.mktemp("predict")
    cs, bdd = base / "cityscapes", base / "bdd100k"
    generate_synthetic(cs, "cityscapes", num_train=4, num_val=3, image_size=CS_HW, seed=0)
    generate_synthetic(bdd, "bdd100k", num_train=1, num_val=2, image_size=BDD_HW, seed=1)
    spec = ExperimentSpec.model_validate(
        {
            "name": "predict",
            "data": {
                "train": [{"format": "cityscapes", "root": str(cs)}],
                "val": [
                    {"format": "cityscapes", "root": str(cs)},
                    {"format": "bdd100k", "root": str(bdd)},
                ],
                "image_size": [32, 64],  # crops; val inputs cover 32x64, scored at native size
            },
            "student": {
                "model": {"width": 4, "depth": 2},
                "train": {"epochs": 1, "batch_size": 2, "max_steps_per_epoch": 1, "lr": 0.01},
            },
            "tracking": {"mode": "disabled"},
        }
    )
    torch.set_num_threads(1)
    result = run_stage(spec, "student", base / "run")
    return result.model_path, cs, bdd, result.metrics


def test_predict_and_evaluate_equal_the_training_val_miou(trained, tmp_path: Path) -> None:
    model, cs, bdd, metrics = trained
    runner = CliRunner()
    matrices = []
    for name, images, fmt in (
        ("cs", cs / "leftImg8bit" / "val", "cityscapes"),
        ("bdd", bdd / "images" / "10k" / "val", "bdd100k"),
    ):
        out = tmp_path / name
        args = ["predict", str(model), "--images", str(images), "--out", str(out)]
        res = runner.invoke(app, [*args, "--input-size", "32x64", "--color", "--device", "cpu"])
        assert res.exit_code == 0, res.output
        pngs = sorted(out.glob("*.png"))
        assert pngs and all(not p.stem.endswith("_leftImg8bit") for p in pngs)
        native = CS_HW if fmt == "cityscapes" else BDD_HW
        assert {np.asarray(Image.open(p)).shape for p in pngs} == {native}
        assert len(list(out.glob("*_overlay.jpg"))) == len(pngs)
        root = cs if fmt == "cityscapes" else bdd
        ev = runner.invoke(
            app, ["evaluate", "--pred", str(out), "--gt", str(root), "--dataset", fmt, "--json"]
        )
        assert ev.exit_code == 0, ev.output
        assert json.loads(ev.stdout)["num_images"] == len(pngs)
        matrices.append(evaluate_predictions(out, root, fmt).matrix)
    cm = ConfusionMatrix()
    cm.matrix = sum(matrices)
    combined = cm.compute()
    assert combined.num_pixels > 0
    assert combined.miou == pytest.approx(metrics["miou"], abs=1e-9)
    assert combined.pixel_accuracy == pytest.approx(metrics["pixel_accuracy"], abs=1e-9)


def test_predict_names_a_missing_folder(trained, tmp_path: Path) -> None:
    model = trained[0]
    res = CliRunner().invoke(
        app, ["predict", str(model), "--images", str(tmp_path / "nope"), "--out", str(tmp_path)]
    )
    assert res.exit_code == 1 and "no such image folder" in res.output
