"""The synthetic driving-scene generator: layouts, determinism, imbalance, ensure_synthetic."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distillery.data import CityscapesDataset, DatasetError, ensure_synthetic, generate_synthetic
from distillery.data.labels import CLASS_NAMES, LABEL_ID_TO_TRAIN_ID
from distillery.data.synthetic import marker_path
from distillery.data.synthetic.scene import CITYSCAPES_STYLE, render_scene
from distillery.spec import DataSpec


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def test_native_layouts_and_names(synthetic_data: dict[str, Path]) -> None:
    cs, bdd = synthetic_data["cityscapes"], synthetic_data["bdd100k"]
    imgs = sorted((cs / "leftImg8bit" / "train").glob("*/*_leftImg8bit.png"))
    assert len(imgs) == 16
    assert {p.parent.name for p in imgs} == {"aachen", "bochum"}
    assert all(re.fullmatch(r"[a-z]+_\d{6}_\d{6}_leftImg8bit\.png", p.name) for p in imgs)
    val_cities = {p.parent.name for p in (cs / "leftImg8bit" / "val").glob("*/*.png")}
    assert val_cities == {"frankfurt", "lindau"}
    jpgs = sorted((bdd / "images" / "10k" / "train").glob("*.jpg"))
    assert len(jpgs) == 16
    assert all(re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{8}\.jpg", p.name) for p in jpgs)
    masks = sorted((bdd / "labels" / "sem_seg" / "masks" / "val").glob("*.png"))
    assert len(masks) == 8
    m = np.asarray(Image.open(masks[0]))
    assert m.shape == (64, 128) and set(np.unique(m)) <= set(range(19)) | {255}
    raw = np.asarray(Image.open(sorted((cs / "gtFine" / "val").glob("*/*labelIds.png"))[0]))
    assert raw.max() > 18, "Cityscapes masks hold labelIds, not trainIds"


def test_deterministic_and_formats_differ(tmp_path: Path) -> None:
    for name in ("a", "b"):
        generate_synthetic(tmp_path / name, "bdd100k", 3, 2, (32, 64), seed=11)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    generate_synthetic(tmp_path / "c", "bdd100k", 3, 2, (32, 64), seed=12)
    assert _files(tmp_path / "a") != _files(tmp_path / "c")
    generate_synthetic(tmp_path / "cs", "cityscapes", 3, 2, (32, 64), seed=11)
    cs = CityscapesDataset(tmp_path / "cs", "train")
    from distillery.data import BDD100KDataset

    bd = BDD100KDataset(tmp_path / "a", "train")
    assert not np.array_equal(cs.load_mask(0), bd.load_mask(0))


def test_more_images_keep_the_first_ones(tmp_path: Path) -> None:
    generate_synthetic(tmp_path / "small", "cityscapes", 2, 1, (32, 64), seed=0)
    generate_synthetic(tmp_path / "big", "cityscapes", 4, 1, (32, 64), seed=0)
    small, big = _files(tmp_path / "small"), _files(tmp_path / "big")
    assert all(big[k] == v for k, v in small.items())


def test_works_at_a_larger_size(tmp_path: Path) -> None:
    generate_synthetic(tmp_path, "cityscapes", 1, 1, (256, 512), seed=0)
    ds = CityscapesDataset(tmp_path, "train")
    image, mask = ds.load(0)
    assert image.shape == (256, 512, 3) and mask.shape == (256, 512)
    assert image.std() > 20  # textured, not flat


def test_class_imbalance_of_driving_scenes() -> None:
    """Road, building, sky and vegetation dominate; the small classes are rare but occur."""
    counts = np.zeros(256, dtype=np.int64)
    present = np.zeros(256, dtype=np.int64)
    n = 80
    for i in range(n):
        _, label_ids = render_scene(np.random.default_rng([0, i]), 64, 128, CITYSCAPES_STYLE)
        c = np.bincount(LABEL_ID_TO_TRAIN_ID[label_ids].ravel(), minlength=256)
        counts += c
        present += c > 0
    freq = counts[:19] / counts[:19].sum()
    f = dict(zip(CLASS_NAMES, freq, strict=True))
    for big in ("road", "building", "sky", "vegetation"):
        assert f[big] > 0.05, (big, f[big])
    for rare in ("pole", "traffic light", "traffic sign", "rider", "motorcycle", "bicycle"):
        assert 0 < f[rare] < 0.03, (rare, f[rare])
    assert min(f["road"], f["building"], f["vegetation"]) > 10 * max(
        f[c] for c in ("traffic light", "rider", "motorcycle", "bicycle")
    )
    assert (present[:19] > 0).all(), "every class occurs somewhere in 80 scenes"
    assert counts[255] > 0, "void pixels (ego vehicle, clutter) are present"


def test_rider_is_a_person_on_a_two_wheeler() -> None:
    """Context: rider pixels always sit right above bicycle/motorcycle pixels of their scene."""
    seen = 0
    for i in range(80):
        _, lab = render_scene(np.random.default_rng([0, i]), 128, 256, CITYSCAPES_STYLE)
        if (lab == 25).sum() < 20:
            continue
        seen += 1
        assert ((lab == 32) | (lab == 33)).any()
        rows = np.flatnonzero((lab == 25).any(1))
        bike_rows = np.flatnonzero(((lab == 32) | (lab == 33)).any(1))
        assert bike_rows.max() > rows.max()  # the bike reaches lower (to the ground)
    assert seen >= 3


def _spec(root: Path, fmt: str = "cityscapes", **syn) -> DataSpec:
    ref = {"format": fmt, "root": str(root)}
    return DataSpec(
        train=[ref],
        val=[ref],
        synthetic={"num_train": 3, "num_val": 2, "image_size": (32, 64), **syn},
    )


def test_ensure_synthetic_generates_once_and_redoes_interrupted(tmp_path: Path) -> None:
    root = tmp_path / "cs"
    ensure_synthetic(_spec(root))
    marker = marker_path(root, "cityscapes")
    assert marker.is_file()
    stamp = marker.stat().st_mtime_ns
    ensure_synthetic(_spec(root))
    assert marker.stat().st_mtime_ns == stamp  # complete: not regenerated
    # an interrupted run: files half written, no marker
    marker.unlink()
    victim = next((root / "leftImg8bit" / "train").glob("*/*.png"))
    victim.write_bytes(b"half")
    (root / ".distillery-synthetic-cityscapes.partial").write_text("{}")
    ensure_synthetic(_spec(root))
    assert marker.is_file() and len(CityscapesDataset(root, "train")) == 3
    CityscapesDataset(root, "train").load(0)
    assert victim.read_bytes() != b"half"
    # other parameters: regenerated
    ensure_synthetic(_spec(root, num_train=4))
    assert len(CityscapesDataset(root, "train")) == 4


def test_ensure_synthetic_covers_every_root_and_format(tmp_path: Path) -> None:
    spec = DataSpec(
        train=[
            {"format": "cityscapes", "root": str(tmp_path / "cs")},
            {"format": "bdd100k", "root": str(tmp_path / "bdd")},
        ],
        val=[
            {"format": "bdd100k", "root": str(tmp_path / "bdd")},
            {"format": "bdd100k", "dataset_id": "remote"},
        ],
        synthetic={"num_train": 2, "num_val": 1, "image_size": (32, 64)},
    )
    ensure_synthetic(spec)
    assert marker_path(tmp_path / "cs", "cityscapes").is_file()
    assert marker_path(tmp_path / "bdd", "bdd100k").is_file()
    assert len(list((tmp_path / "bdd" / "images" / "10k" / "val").glob("*.jpg"))) == 1
    ensure_synthetic(DataSpec(train=spec.train, val=spec.val))  # synthetic unset: no-op


def test_refuses_to_overwrite_foreign_data(tmp_path: Path) -> None:
    folder = tmp_path / "images" / "10k" / "train"
    folder.mkdir(parents=True)
    (folder / "real.jpg").write_bytes(b"precious")
    with pytest.raises(DatasetError, match=re.escape(str(folder))):
        generate_synthetic(tmp_path, "bdd100k", 2, 1, (32, 64), seed=0)
    assert (folder / "real.jpg").read_bytes() == b"precious"


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="format"):
        generate_synthetic(tmp_path, "kitti", 2, 1, (32, 64), seed=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="too small"):
        generate_synthetic(tmp_path, "bdd100k", 2, 1, (4, 4), seed=0)
