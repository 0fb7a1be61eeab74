"""Score prediction PNGs from any model against a dataset's ground truth in its native layout.

Predictions are single-channel PNGs of trainIds (0..18, 255 = no prediction), one per ground-truth
image, anywhere under a folder. A prediction is matched to the ground-truth image whose stem
(e.g. ``aachen_000000_000019``) is the longest one its file name starts with, followed by the end
of the name or a non-alphanumeric character (``<stem>.png``, ``<stem>_pred.png``, ...).

Ground truth layouts (read here with PIL, independent of the dataset loaders):

- Cityscapes: ``gtFine/{split}/{city}/{stem}_gtFine_labelIds.png`` (labelIds -> trainIds)
- BDD100K:    ``labels/sem_seg/masks/{split}/{stem}.png`` (already trainIds)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from distillery.data.labels import IGNORE_INDEX, LABEL_ID_TO_TRAIN_ID, NUM_CLASSES
from distillery.metrics import ConfusionMatrix, SegMetrics

DatasetFormat = Literal["cityscapes", "bdd100k"]
DATASET_FORMATS: tuple[str, ...] = ("cityscapes", "bdd100k")

CITYSCAPES_GT_SUFFIX = "_gtFine_labelIds.png"
#: How many names an error message lists before "... and N more".
_LIST_LIMIT = 10


class EvaluationError(ValueError):
    """Bad input to an evaluation; the message names the file, stem or folder."""


@dataclass(frozen=True)
class EvalResult:
    metrics: SegMetrics
    num_images: int
    #: Prediction files that match no ground-truth image (ignored).
    unmatched: list[Path] = field(default_factory=list)
    #: The confusion counts (`ConfusionMatrix.matrix`), to combine several data sets' results.
    matrix: torch.Tensor | None = None

    def as_dict(self) -> dict[str, Any]:
        """``{"miou", "iou": {class: value | None}, "pixel_accuracy", "num_images"}``."""
        return {**self.metrics.as_dict(), "num_images": self.num_images}


def _listing(names: Iterable[object]) -> str:
    names = sorted(str(n) for n in names)
    shown = ", ".join(names[:_LIST_LIMIT])
    more = len(names) - _LIST_LIMIT
    return shown + (f" ... and {more} more" if more > 0 else "")


# ---------------------------------------------------------------------------- ground truth


def ground_truth_dir(root: Path, dataset: DatasetFormat, split: str) -> Path:
    """The folder holding a split's ground-truth masks in the dataset's native layout."""
    if dataset == "cityscapes":
        return Path(root) / "gtFine" / split
    if dataset == "bdd100k":
        return Path(root) / "labels" / "sem_seg" / "masks" / split
    raise EvaluationError(f"dataset: unknown format {dataset!r}; use one of {DATASET_FORMATS}")


def find_ground_truth(root: Path, dataset: DatasetFormat, split: str) -> dict[str, Path]:
    """Map each ground-truth image's stem to its mask file."""
    gt_dir = ground_truth_dir(root, dataset, split)
    if not gt_dir.is_dir():
        raise EvaluationError(
            f"{gt_dir}: no such folder; expected the {dataset} ground truth of split {split!r} "
            f"under {root}"
        )
    found: dict[str, Path] = {}
    if dataset == "cityscapes":
        for p in sorted(gt_dir.glob(f"*/*{CITYSCAPES_GT_SUFFIX}")):
            found[p.name[: -len(CITYSCAPES_GT_SUFFIX)]] = p
    else:
        for p in sorted(gt_dir.glob("*.png")):
            found[p.stem] = p
    if not found:
        pattern = f"{{city}}/*{CITYSCAPES_GT_SUFFIX}" if dataset == "cityscapes" else "*.png"
        raise EvaluationError(f"{gt_dir}: no ground-truth masks ({pattern})")
    return found


def _read_single_channel(path: Path, what: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except (OSError, ValueError) as e:
        raise EvaluationError(f"{path}: cannot read {what} PNG: {e}") from None
    if arr.ndim != 2:
        raise EvaluationError(
            f"{path}: {what} must be a single-channel PNG of class ids, got shape {arr.shape}"
        )
    return arr.astype(np.int64)


def read_ground_truth(path: Path, dataset: DatasetFormat) -> np.ndarray:
    """A ground-truth mask as (H, W) int64 trainIds (0..18, 255 = ignore)."""
    arr = _read_single_channel(path, "ground truth")
    if dataset == "cityscapes":
        if arr.min() < 0 or arr.max() > 255:
            raise EvaluationError(f"{path}: labelIds outside 0..255")
        return LABEL_ID_TO_TRAIN_ID[arr].astype(np.int64)
    _check_train_ids(arr, path, "ground truth")
    return arr


def _check_train_ids(arr: np.ndarray, path: Path, what: str) -> None:
    bad = ((arr < 0) | (arr >= NUM_CLASSES)) & (arr != IGNORE_INDEX)
    if bad.any():
        values = np.unique(arr[bad])[:_LIST_LIMIT].tolist()
        raise EvaluationError(
            f"{path}: {what} holds values {values} outside the trainIds 0..{NUM_CLASSES - 1} "
            f"and {IGNORE_INDEX}"
        )


# ----------------------------------------------------------------------------- predictions


def read_prediction(path: Path) -> np.ndarray:
    """A prediction PNG as (H, W) int64 trainIds; other values are an error naming the file."""
    arr = _read_single_channel(path, "prediction")
    _check_train_ids(arr, path, "prediction")
    return arr


def _match_stem(name: str, stems: set[str]) -> str | None:
    """The longest stem that `name` starts with, ending at the end of `name` or before a
    non-alphanumeric character."""
    for end in range(len(name), 0, -1):
        if (end == len(name) or not name[end].isalnum()) and name[:end] in stems:
            return name[:end]
    return None


def match_predictions(pred_dir: Path, stems: Iterable[str]) -> tuple[dict[str, Path], list[Path]]:
    """Find one ``*.png`` under `pred_dir` (recursively) per ground-truth stem.

    Returns (stem -> prediction file, files matching no stem). Two files for one stem are an
    error naming both.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise EvaluationError(f"{pred_dir}: no such prediction folder")
    stem_set = set(stems)
    matched: dict[str, Path] = {}
    unmatched: list[Path] = []
    for p in sorted(pred_dir.rglob("*")):
        if p.suffix.lower() != ".png" or not p.is_file():
            continue
        stem = _match_stem(p.name[: -len(p.suffix)], stem_set)
        if stem is None:
            unmatched.append(p)
        elif stem in matched:
            raise EvaluationError(
                f"two predictions for {stem}: {matched[stem]} and {p}; keep one per image"
            )
        else:
            matched[stem] = p
    return matched, unmatched


# ------------------------------------------------------------------------------- evaluation


def evaluate_predictions(
    pred_dir: Path | str,
    gt_root: Path | str,
    dataset: DatasetFormat,
    split: str = "val",
) -> EvalResult:
    """Score every ground-truth image of `split` against its prediction under `pred_dir`.

    Every ground-truth image needs a prediction of the same size (as the official evaluation
    requires); a missing one is an error naming the stem(s).
    """
    if dataset not in DATASET_FORMATS:
        raise EvaluationError(f"dataset: unknown format {dataset!r}; use one of {DATASET_FORMATS}")
    gt = find_ground_truth(Path(gt_root), dataset, split)
    preds, unmatched = match_predictions(Path(pred_dir), gt)
    missing = [s for s in gt if s not in preds]
    if missing:
        raise EvaluationError(
            f"{pred_dir}: no prediction for {len(missing)} of {len(gt)} ground-truth images "
            f"({dataset} {split}): {_listing(missing)}"
        )
    cm = ConfusionMatrix()
    for stem, gt_path in gt.items():
        target = read_ground_truth(gt_path, dataset)
        pred = read_prediction(preds[stem])
        if pred.shape != target.shape:
            raise EvaluationError(
                f"{preds[stem]}: prediction is {pred.shape[1]}x{pred.shape[0]} (WxH) but its "
                f"ground truth {gt_path.name} is {target.shape[1]}x{target.shape[0]}"
            )
        cm.update(torch.from_numpy(pred), torch.from_numpy(target))
    return EvalResult(
        metrics=cm.compute(), num_images=len(gt), unmatched=unmatched, matrix=cm.matrix
    )
