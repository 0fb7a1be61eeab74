"""`distillery evaluate`: prediction PNGs scored against hand-made Cityscapes / BDD100K trees."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from distillery.cli.evaluate import register
from distillery.data.labels import TRAIN_ID_TO_LABEL_ID
from distillery.evaluate import EvaluationError, evaluate_predictions, match_predictions

H, W = 8, 16
CS_STEMS = ("aachen_000000_000019", "frankfurt_000001_000042")


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(path)
    return path


def _gt_train_ids() -> list[np.ndarray]:
    """Two 8x16 trainId masks: road (0) / car (13), building (2) / ignore; sidewalk absent."""
    a = np.zeros((H, W), np.uint8)
    a[:, 8:] = 13  # left road, right car
    b = np.full((H, W), 2, np.uint8)
    b[:4] = 255  # top ignore, bottom building
    return [a, b]


def _cityscapes(root: Path) -> Path:
    for stem, train_ids in zip(CS_STEMS, _gt_train_ids(), strict=True):
        label_ids = TRAIN_ID_TO_LABEL_ID[train_ids]  # 255 -> 0 'unlabeled'
        city = stem.split("_")[0]
        _png(root / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png", label_ids)
    # distractors of the real layout that must not be read as ground truth
    _png(root / "gtFine" / "val" / "aachen" / f"{CS_STEMS[0]}_gtFine_color.png", np.zeros((H, W)))
    return root


def _predictions() -> list[np.ndarray]:
    a, b = (m.copy() for m in _gt_train_ids())
    a[:, 6:8] = 13  # 16 road pixels predicted car
    b[4:, :4] = 1  # 16 building pixels predicted sidewalk
    b[0, 0] = 0  # a prediction on an ignored pixel does not count
    return [a, b]


# road: TP 48, FN 16 -> 0.75; car: TP 64, FP 16 -> 0.8; building: TP 48, FN 16 -> 0.75;
# sidewalk: FP 16 only -> 0.0; the other 15 classes absent from both -> None
EXPECTED = {"road": 0.75, "car": 0.8, "building": 0.75, "sidewalk": 0.0}
EXPECTED_MIOU = (0.75 + 0.8 + 0.75 + 0.0) / 4
EXPECTED_ACC = (48 + 64 + 48) / (128 + 64)


def _write_cs_predictions(pred_dir: Path, preds: list[np.ndarray] | None = None) -> None:
    preds = preds if preds is not None else _predictions()
    _png(pred_dir / f"{CS_STEMS[0]}.png", preds[0])
    _png(pred_dir / "nested" / "deeper" / f"{CS_STEMS[1]}_leftImg8bit_pred.png", preds[1])


def test_cityscapes_hand_computed(tmp_path: Path) -> None:
    gt = _cityscapes(tmp_path / "cs")
    _write_cs_predictions(tmp_path / "pred")
    _png(tmp_path / "pred" / "munich_000000_000000.png", np.zeros((H, W)))  # no such GT
    result = evaluate_predictions(tmp_path / "pred", gt, "cityscapes", "val")
    d = result.as_dict()
    assert d["num_images"] == 2
    for name, value in EXPECTED.items():
        assert d["iou"][name] == pytest.approx(value), name
    assert sum(v is None for v in d["iou"].values()) == 15
    assert d["iou"]["person"] is None
    assert d["miou"] == pytest.approx(EXPECTED_MIOU)
    assert d["pixel_accuracy"] == pytest.approx(EXPECTED_ACC)
    assert [p.name for p in result.unmatched] == ["munich_000000_000000.png"]


def test_perfect_prediction_gives_miou_one(tmp_path: Path) -> None:
    gt = _cityscapes(tmp_path / "cs")
    _write_cs_predictions(tmp_path / "pred", _gt_train_ids())
    m = evaluate_predictions(tmp_path / "pred", gt, "cityscapes").metrics
    assert m.miou == 1.0 and m.pixel_accuracy == 1.0


def _bdd(root: Path, stems: tuple[str, ...]) -> Path:
    for stem, mask in zip(stems, _gt_train_ids(), strict=True):
        _png(root / "labels" / "sem_seg" / "masks" / "val" / f"{stem}.png", mask)
    return root


def test_bdd100k_and_longest_stem_match(tmp_path: Path) -> None:
    # one stem is a prefix of the other: each prediction must go to the longest stem it names
    stems = ("7d2f7975-e0c1c5a7", "7d2f7975-e0c1c5a7-2")
    gt = _bdd(tmp_path / "bdd", stems)
    preds = _predictions()
    _png(tmp_path / "pred" / "7d2f7975-e0c1c5a7-2_pred.png", preds[1])
    _png(tmp_path / "pred" / "7d2f7975-e0c1c5a7.png", preds[0])
    matched, unmatched = match_predictions(tmp_path / "pred", stems)
    assert matched[stems[1]].name == "7d2f7975-e0c1c5a7-2_pred.png"
    assert not unmatched
    m = evaluate_predictions(tmp_path / "pred", gt, "bdd100k", "val").metrics
    assert m.miou == pytest.approx(EXPECTED_MIOU)


def test_missing_prediction_names_the_stem(tmp_path: Path) -> None:
    gt = _cityscapes(tmp_path / "cs")
    _png(tmp_path / "pred" / f"{CS_STEMS[0]}.png", _gt_train_ids()[0])
    with pytest.raises(EvaluationError, match=CS_STEMS[1]):
        evaluate_predictions(tmp_path / "pred", gt, "cityscapes")


def test_wrong_size_names_the_file(tmp_path: Path) -> None:
    gt = _cityscapes(tmp_path / "cs")
    preds = _predictions()
    preds[1] = np.zeros((H, W + 2), np.uint8)
    _write_cs_predictions(tmp_path / "pred", preds)
    with pytest.raises(EvaluationError, match=f"{CS_STEMS[1]}_leftImg8bit_pred.png.*18x8"):
        evaluate_predictions(tmp_path / "pred", gt, "cityscapes")


def test_out_of_range_value_names_the_file(tmp_path: Path) -> None:
    gt = _cityscapes(tmp_path / "cs")
    preds = _predictions()
    preds[0][0, 0] = 19
    _write_cs_predictions(tmp_path / "pred", preds)
    with pytest.raises(EvaluationError, match=rf"{CS_STEMS[0]}\.png.*\[19\]"):
        evaluate_predictions(tmp_path / "pred", gt, "cityscapes")


def test_colour_prediction_and_duplicates_are_errors(tmp_path: Path) -> None:
    gt = _cityscapes(tmp_path / "cs")
    _write_cs_predictions(tmp_path / "pred")
    _png(tmp_path / "pred" / "dup" / f"{CS_STEMS[0]}_color.png", np.zeros((H, W, 3)))
    with pytest.raises(EvaluationError, match="two predictions for aachen_000000_000019"):
        evaluate_predictions(tmp_path / "pred", gt, "cityscapes")
    (tmp_path / "pred" / f"{CS_STEMS[0]}.png").unlink()
    with pytest.raises(EvaluationError, match="single-channel"):
        evaluate_predictions(tmp_path / "pred", gt, "cityscapes")


def test_missing_ground_truth_folder(tmp_path: Path) -> None:
    (tmp_path / "pred").mkdir()
    with pytest.raises(EvaluationError, match=r"gtFine/test: no such folder"):
        evaluate_predictions(tmp_path / "pred", tmp_path, "cityscapes", "test")


# --------------------------------------------------------------------------------------- CLI


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _main() -> None:  # a group, so `evaluate` is a sub-command as in `distillery`
        pass

    register(app)
    return app


def test_cli_json(tmp_path: Path) -> None:
    gt = _cityscapes(tmp_path / "cs")
    _write_cs_predictions(tmp_path / "pred")
    args = ["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(gt)]
    result = CliRunner().invoke(_app(), [*args, "--dataset", "cityscapes", "--json"])
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert set(d) == {"miou", "iou", "pixel_accuracy", "num_images"}
    assert d["miou"] == pytest.approx(EXPECTED_MIOU)
    assert d["iou"]["car"] == pytest.approx(0.8) and d["iou"]["train"] is None
    assert d["num_images"] == 2

    table = CliRunner().invoke(_app(), [*args, "--dataset", "cityscapes"])
    assert table.exit_code == 0 and "mIoU" in table.stdout and "57.50" in table.stdout


def test_cli_error_exit_code_and_message(tmp_path: Path) -> None:
    gt = _cityscapes(tmp_path / "cs")
    (tmp_path / "pred").mkdir()
    result = CliRunner().invoke(
        _app(),
        ["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(gt), "--dataset", "cityscapes"],
    )
    assert result.exit_code == 1
    assert "no prediction for 2 of 2" in result.output and CS_STEMS[0] in result.output
    bad = CliRunner().invoke(_app(), ["evaluate", "--pred", "x", "--gt", "y", "--dataset", "kitti"])
    assert bad.exit_code == 2
