"""The Cityscapes and BDD100K loaders: layouts, label mapping, errors, the registry, build."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from cityscapesscripts.helpers.labels import labels as CS_LABELS
from PIL import Image

from distillery.data import (
    DATASETS,
    BDD100KDataset,
    CityscapesDataset,
    DatasetError,
    build_datasets,
    denormalize,
    validate_dataset,
)
from distillery.data.datasets import read_mask_raw
from distillery.data.labels import LABEL_ID_TO_TRAIN_ID
from distillery.spec import DataSpec

from .helpers import random_image, write_bdd, write_cityscapes


def test_registry_names_both_formats() -> None:
    assert DATASETS.get("cityscapes") is CityscapesDataset
    assert DATASETS.get("bdd100k") is BDD100KDataset
    with pytest.raises(KeyError, match="unknown dataset"):
        DATASETS.get("kitti")


@pytest.mark.parametrize("fmt", ["cityscapes", "bdd100k"])
def test_loaders_read_the_generated_layouts(synthetic_data: dict[str, Path], fmt: str) -> None:
    ds = DATASETS.get(fmt)(synthetic_data[fmt], "train")
    assert len(ds) == 16
    item = ds[3]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 64, 128)
    assert item["mask"].dtype == torch.int64 and item["mask"].shape == (64, 128)
    values = set(item["mask"].unique().tolist())
    assert values <= set(range(19)) | {255}
    sample = ds.samples[3]
    if fmt == "cityscapes":
        assert sample.image.name == f"{item['name']}_leftImg8bit.png"
        assert item["name"].split("_")[0] in {"aachen", "bochum"}
    else:
        assert sample.image.name == f"{item['name']}.jpg"
    # without a transform the image is only normalised: denormalize gives the file back
    stored = np.asarray(Image.open(sample.image).convert("RGB"))
    assert np.abs(denormalize(item["image"]).astype(int) - stored.astype(int)).max() <= 1


def test_cityscapes_mask_is_mapped_by_the_official_table(synthetic_data: dict[str, Path]) -> None:
    ds = CityscapesDataset(synthetic_data["cityscapes"], "val")
    raw = read_mask_raw(ds.samples[0].mask)
    expected = {lab.id: (lab.trainId if 0 <= lab.trainId < 255 else 255) for lab in CS_LABELS}
    mask = ds.load_mask(0)
    for lid in np.unique(raw):
        assert np.all(mask[raw == lid] == expected[int(lid)])
    assert (raw == 1).any(), "the generator draws the ego vehicle (void labelId 1)"


def test_every_label_id_maps_exactly(tmp_path: Path) -> None:
    """One image holding every labelId 0..33: each pixel gets the official trainId."""
    lab = np.arange(34, dtype=np.uint8).repeat(2).reshape(4, 17)
    write_cityscapes(tmp_path, "train", {"aachen_000000_000019": (random_image(4, 17), lab)})
    mask = CityscapesDataset(tmp_path, "train").load_mask(0)
    for label in CS_LABELS:
        if label.id < 0:
            continue
        want = label.trainId if 0 <= label.trainId < 255 else 255
        assert np.all(mask[lab == label.id] == want), label.name
        assert LABEL_ID_TO_TRAIN_ID[label.id] == want


def test_bdd_masks_are_kept_as_train_ids(tmp_path: Path) -> None:
    lab = np.array([[0, 5, 18, 255], [13, 13, 255, 7]], dtype=np.uint8)
    write_bdd(tmp_path, "val", {"0a0a0b1a-7c39d841": (random_image(2, 4), lab)})
    ds = BDD100KDataset(tmp_path, "val")
    assert ds[0]["name"] == "0a0a0b1a-7c39d841"
    assert np.array_equal(ds[0]["mask"].numpy(), lab.astype(np.int64))


# ----------------------------------------------------------------------------------- errors


def _cs_one(tmp_path: Path, lab: np.ndarray | None = None, img: np.ndarray | None = None):
    lab = np.full((4, 6), 7, np.uint8) if lab is None else lab
    img = random_image(4, 6) if img is None else img
    return write_cityscapes(tmp_path, "train", {"aachen_000000_000019": (img, lab)})[
        "aachen_000000_000019"
    ]


def test_corrupt_image_names_the_file(tmp_path: Path) -> None:
    img_path, _ = _cs_one(tmp_path)
    img_path.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    ds = CityscapesDataset(tmp_path, "train")
    with pytest.raises(DatasetError, match=re.escape(str(img_path))):
        ds[0]


def test_truncated_jpeg_names_the_file(tmp_path: Path) -> None:
    paths = write_bdd(
        tmp_path,
        "train",
        {"00000000-00000001": (random_image(32, 32), np.zeros((32, 32), np.uint8))},
    )
    img_path = paths["00000000-00000001"][0]
    img_path.write_bytes(img_path.read_bytes()[:200])
    with pytest.raises(DatasetError, match=re.escape(str(img_path))):
        BDD100KDataset(tmp_path, "train")[0]


def test_size_mismatch_names_the_mask(tmp_path: Path) -> None:
    _, mask_path = _cs_one(tmp_path, lab=np.full((5, 6), 7, np.uint8))
    with pytest.raises(DatasetError, match=re.escape(str(mask_path)) + ".*differs"):
        CityscapesDataset(tmp_path, "train")[0]


def test_unknown_cityscapes_label_id(tmp_path: Path) -> None:
    lab = np.full((4, 6), 7, np.uint8)
    lab[1, 1] = 34
    _, mask_path = _cs_one(tmp_path, lab=lab)
    with pytest.raises(DatasetError, match=re.escape(str(mask_path)) + r".*\[34\]"):
        CityscapesDataset(tmp_path, "train")[0]


def test_unknown_bdd_value(tmp_path: Path) -> None:
    lab = np.zeros((4, 6), np.uint8)
    lab[0, 0] = 19
    paths = write_bdd(tmp_path, "train", {"00000000-00000002": (random_image(4, 6), lab)})
    mask_path = paths["00000000-00000002"][1]
    with pytest.raises(DatasetError, match=re.escape(str(mask_path)) + r".*\[19\]"):
        BDD100KDataset(tmp_path, "train")[0]


def test_rgb_mask_is_refused(tmp_path: Path) -> None:
    img_path, mask_path = _cs_one(tmp_path)
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(mask_path)
    with pytest.raises(DatasetError, match=re.escape(str(mask_path)) + ".*one channel"):
        CityscapesDataset(tmp_path, "train")[0]


def test_missing_mask_names_the_image(tmp_path: Path) -> None:
    img_path, mask_path = _cs_one(tmp_path)
    mask_path.unlink()
    with pytest.raises(DatasetError, match=re.escape(f"{img_path}: no mask")):
        CityscapesDataset(tmp_path, "train")


def test_mask_without_image_names_the_mask(tmp_path: Path) -> None:
    paths = write_bdd(
        tmp_path,
        "train",
        {s: (random_image(4, 6), np.zeros((4, 6), np.uint8)) for s in ("a-1", "b-2")},
    )
    paths["a-1"][0].unlink()
    with pytest.raises(DatasetError, match=re.escape(f"{paths['a-1'][1]}: mask without an image")):
        BDD100KDataset(tmp_path, "train")


def test_empty_and_missing_splits_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "leftImg8bit" / "val"))):
        CityscapesDataset(tmp_path, "val")
    (tmp_path / "images" / "10k" / "train").mkdir(parents=True)
    empty = tmp_path / "images" / "10k" / "train"
    with pytest.raises(DatasetError, match=re.escape(f"{empty}: empty")):
        BDD100KDataset(tmp_path, "train")


def test_validate_dataset_counts_and_stops_at_the_first_problem(
    synthetic_data: dict[str, Path], tmp_path: Path
) -> None:
    report = validate_dataset(synthetic_data["bdd100k"], "bdd100k", "val")
    assert report["images"] == 8 and report["image_sizes"] == {"64x128": 8}
    assert sum(report["class_pixels"]) + report["ignore_pixels"] == 8 * 64 * 128
    lab = np.full((4, 6), 7, np.uint8)
    lab[0, 0] = 200
    _, mask_path = _cs_one(tmp_path, lab=lab)
    with pytest.raises(DatasetError, match=re.escape(str(mask_path))):
        validate_dataset(tmp_path, "cityscapes", "train")
    with pytest.raises(ValueError, match="unknown dataset"):
        validate_dataset(tmp_path, "kitti", "train")


# ------------------------------------------------------------------------------------ build


def _spec(roots: dict[str, Path], **kw) -> DataSpec:
    refs = [{"format": f, "root": str(r)} for f, r in roots.items()]
    return DataSpec(train=refs, val=refs, image_size=(32, 64), **kw)


def test_build_concatenates_both_formats(synthetic_data: dict[str, Path]) -> None:
    train, val = build_datasets(_spec(synthetic_data), seed=3)
    assert len(train) == 32 and len(val) == 16
    names = {train[i]["name"] for i in range(len(train))}
    assert any(n.startswith(("aachen_", "bochum_")) for n in names)
    assert any("-" in n for n in names)
    batch = torch.utils.data.default_collate([train[0], train[len(train) - 1]])
    assert batch["image"].shape == (2, 3, 32, 64) and batch["mask"].shape == (2, 32, 64)
    for item in (val[0], val[len(val) - 1]):  # inputs cover image_size, masks stay native
        assert item["image"].shape == (3, 32, 64) and item["mask"].shape == (64, 128)


def test_build_resolves_dataset_ids(synthetic_data: dict[str, Path]) -> None:
    spec = DataSpec(
        train=[{"format": "bdd100k", "dataset_id": "ds-1"}],
        val=[{"format": "bdd100k", "dataset_id": "ds-1"}],
        image_size=(32, 64),
    )
    with pytest.raises(DatasetError, match="ds-1"):
        build_datasets(spec)
    train, _ = build_datasets(spec, resolve_root=lambda ref: synthetic_data["bdd100k"])
    assert len(train) == 16


def test_training_items_are_reproducible_and_change_per_epoch(
    synthetic_data: dict[str, Path],
) -> None:
    def first(seed: int, epoch: int) -> torch.Tensor:
        train, _ = build_datasets(_spec(synthetic_data), seed=seed)
        train.set_epoch(epoch)
        return train[5]["image"]

    assert torch.equal(first(0, 0), first(0, 0))
    assert not torch.equal(first(0, 0), first(0, 1))
    assert not torch.equal(first(0, 0), first(1, 0))
    train, _ = build_datasets(_spec(synthetic_data), seed=0)
    assert not torch.equal(train[5]["image"], train[5]["image"])  # second visit: new draw


def test_dataloader_workers_are_deterministic(synthetic_data: dict[str, Path]) -> None:
    def run() -> torch.Tensor:
        train, _ = build_datasets(_spec({"bdd100k": synthetic_data["bdd100k"]}), seed=0)
        loader = torch.utils.data.DataLoader(
            train, batch_size=4, num_workers=2, generator=torch.Generator().manual_seed(7)
        )
        return next(iter(loader))["image"]

    assert torch.equal(run(), run())
