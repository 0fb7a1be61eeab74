"""Build the training and validation sets that a spec's `data` section names."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch.utils.data import ConcatDataset

from distillery.data.datasets import DATASETS, SegmentationDataset
from distillery.data.errors import DatasetError
from distillery.data.seeding import derive_seed
from distillery.data.transforms import TrainTransform, ValTransform
from distillery.spec import DatasetRef, DataSpec


class SegmentationConcat(ConcatDataset):
    """A ConcatDataset of segmentation sets (same 19 classes) that forwards `set_epoch`."""

    datasets: list[SegmentationDataset]

    def set_epoch(self, epoch: int) -> None:
        for ds in self.datasets:
            ds.set_epoch(epoch)


def local_root(ref: DatasetRef) -> Path:
    """The default `resolve_root`: a ref's local `root`; a `dataset_id` needs the platform."""
    if ref.root is None:
        raise DatasetError(
            f"dataset_id {ref.dataset_id!r}: only the platform can fetch a registered data set; "
            "give a local root instead"
        )
    return Path(ref.root)


def build_datasets(
    spec: DataSpec,
    resolve_root: Callable[[DatasetRef], Path] | None = None,
    seed: int = 0,
) -> tuple[SegmentationConcat, SegmentationConcat]:
    """(train, val): every `spec.train` ref with augmentation (random scale, crop to
    `spec.image_size`, flip, jitter), every `spec.val` ref with its images resized (aspect ratio
    kept) to cover `spec.val_resize` and its masks at their native size.

    `resolve_root` maps a ref to a local folder (default: `Path(ref.root)`). If `spec.synthetic`
    is set, the synthetic data set is generated first into local roots that lack it
    (`ensure_synthetic`, idempotent and safe for concurrent callers).
    """
    if spec.synthetic is not None:
        from distillery.data.synthetic import ensure_synthetic

        ensure_synthetic(spec)
    resolve = resolve_root or local_root
    train_tf = TrainTransform(spec.image_size, spec.augment)
    val_tf = ValTransform(spec.val_resize)
    train = [
        DATASETS.get(ref.format)(resolve(ref), spec.train_split, train_tf, derive_seed(seed, k))
        for k, ref in enumerate(spec.train)
    ]
    val = [
        DATASETS.get(ref.format)(resolve(ref), spec.val_split, val_tf, derive_seed(seed, k))
        for k, ref in enumerate(spec.val)
    ]
    return SegmentationConcat(train), SegmentationConcat(val)
