"""Run an exported model over a folder of images and write trainId PNGs (`distillery predict`).

Every ``*.png`` / ``*.jpg`` / ``*.jpeg`` under the image folder (recursively) gets
``OUT/<stem>.png``: a single-channel PNG of trainIds at the image's native size, the format
`distillery evaluate` reads. The stem is the file name without its extension and without the
Cityscapes ``_leftImg8bit`` suffix (``aachen_000000_000019_leftImg8bit.png`` ->
``aachen_000000_000019.png``). With ``color``, ``OUT/<stem>_overlay.jpg`` blends the Cityscapes
palette over the image (JPEG, so that `evaluate` never mistakes it for a prediction).

Inference is `distillery.inference.segment`, the same as validation during training: the input
resized to cover `input_size` with its aspect ratio kept (native if None), padded to the model's
multiple, logits upsampled to the native size before the argmax.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from distillery.data.datasets import read_image
from distillery.data.transforms import ValTransform
from distillery.inference import collate_list, same_size_runs, segment
from distillery.models.checkpoint import load_model_checkpoint

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Cityscapes image names end with this before the extension; it is not part of the stem.
CITYSCAPES_IMAGE_TAG = "_leftImg8bit"


class PredictionError(ValueError):
    """Bad input to `predict_folder`; the message names the folder or files."""


def image_stem(path: Path) -> str:
    """The name a prediction is saved under: the file stem less ``_leftImg8bit``."""
    stem = path.stem
    return stem[: -len(CITYSCAPES_IMAGE_TAG)] if stem.endswith(CITYSCAPES_IMAGE_TAG) else stem


def find_images(folder: Path) -> list[tuple[str, Path]]:
    """(stem, path) of every image under `folder`, sorted; two images with one stem are an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PredictionError(f"{folder}: no such image folder")
    found: dict[str, Path] = {}
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
            continue
        stem = image_stem(p)
        if stem in found:
            raise PredictionError(f"two images named {stem}: {found[stem]} and {p}")
        found[stem] = p
    if not found:
        raise PredictionError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return sorted(found.items())


class _Images(Dataset):
    def __init__(self, images: list[tuple[str, Path]], size: Sequence[int] | None) -> None:
        self.images, self.transform = images, ValTransform(size)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        stem, path = self.images[i]
        rgb = read_image(path)
        hwc = torch.from_numpy(rgb).permute(2, 0, 1)
        mask = torch.zeros(rgb.shape[:2], dtype=torch.int64)  # native size marker, unused
        image, mask = self.transform(hwc, mask)
        return {"image": image, "mask": mask, "name": stem, "rgb": rgb}


@dataclass(frozen=True)
class PredictResult:
    num_images: int
    out_dir: Path
    device: str


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PredictionError(f"device {name!r}: CUDA is not available here")
    return torch.device(name)


def _batches(loader: DataLoader) -> Iterator[list[dict]]:
    for batch in loader:
        yield from same_size_runs(batch)


def predict_folder(
    model_path: Path | str,
    images_dir: Path | str,
    out_dir: Path | str,
    *,
    input_size: Sequence[int] | None = None,
    color: bool = False,
    batch_size: int = 4,
    device: str = "auto",
    num_workers: int = 0,
    on_image: Callable[[str], None] | None = None,
) -> PredictResult:
    """Predict every image under `images_dir` with the exported model `model_path` into
    `out_dir` (see the module docstring); `on_image(stem)` is called after each one is written."""
    if batch_size < 1:
        raise PredictionError(f"batch_size must be >= 1, got {batch_size}")
    dev = _device(device)
    model, _ = load_model_checkpoint(model_path, map_location=dev)
    images = find_images(Path(images_dir))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loader = DataLoader(
        _Images(images, input_size),
        batch_size=batch_size,
        collate_fn=collate_list,
        num_workers=num_workers,
        pin_memory=dev.type == "cuda",
    )
    from distillery.visualize import overlay

    with torch.inference_mode():
        for run in _batches(loader):
            x = torch.stack([it["image"] for it in run]).to(dev, non_blocking=True)
            labels = segment(model, x, run[0]["mask"].shape).argmax(1).to(torch.uint8).cpu()
            for it, lab in zip(run, labels.numpy(), strict=True):
                Image.fromarray(lab).save(out / f"{it['name']}.png")
                if color:
                    blended = overlay(it["rgb"], lab.astype(np.int64))
                    Image.fromarray(blended).save(out / f"{it['name']}_overlay.jpg", quality=90)
                if on_image is not None:
                    on_image(it["name"])
    return PredictResult(len(images), out, str(dev))
