"""Augmentation and validation transforms: alignment, padding, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distillery.data import TrainTransform, ValTransform, denormalize, normalize
from distillery.spec import AugmentSpec

NO_JITTER = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0}


def _block_mask(h: int, w: int, seed: int = 0, block: int = 8) -> torch.Tensor:
    """Random square blocks of classes 0..3, asymmetric left/right."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 4, (h // block, w // block))
    blocks[:, 0] = 0
    blocks[:, -1] = 3
    return torch.from_numpy(np.kron(blocks, np.ones((block, block), dtype=np.int64)))


def _image_from(mask: torch.Tensor) -> torch.Tensor:
    """Grey level = 60 * class + 20: the image encodes its own mask."""
    grey = (mask * 60 + 20).to(torch.uint8)
    return grey.expand(3, *mask.shape).clone()


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_flip_keeps_image_and_mask_aligned() -> None:
    mask = _block_mask(32, 64)
    tf = TrainTransform((32, 64), AugmentSpec(scale_range=(1.0, 1.0), **NO_JITTER))
    flipped = 0
    for seed in range(20):
        img, m = tf(_image_from(mask), mask, _g(seed))
        assert torch.equal(m, mask) or torch.equal(m, mask.flip(-1))
        flipped += torch.equal(m, mask.flip(-1))
        grey = torch.from_numpy(denormalize(img)[..., 0].astype(np.int64))
        assert torch.all((grey - (m * 60 + 20)).abs() <= 1)
    assert 0 < flipped < 20
    no_flip = TrainTransform(
        (32, 64), AugmentSpec(scale_range=(1.0, 1.0), hflip=False, **NO_JITTER)
    )
    assert all(torch.equal(no_flip(_image_from(mask), mask, _g(s))[1], mask) for s in range(10))


@pytest.mark.parametrize("seed", range(6))
def test_scale_crop_flip_keep_alignment(seed: int) -> None:
    mask = _block_mask(64, 128, seed, block=16)
    tf = TrainTransform((32, 64), AugmentSpec(scale_range=(0.7, 2.0), **NO_JITTER))
    img, m = tf(_image_from(mask), mask, _g(seed))
    assert img.shape == (3, 32, 64) and m.shape == (32, 64) and m.dtype == torch.int64
    assert set(m.unique().tolist()) <= {0, 1, 2, 3, 255}
    grey = torch.from_numpy(denormalize(img)[..., 0].astype(np.int64))
    # away from class boundaries (where bilinear resampling blends) the image encodes the mask
    # (antialiased shrinking by up to ~3x blends over about two output pixels: a 5x5 window;
    # the crop's own border is excluded, it may blend with pixels just outside the crop)
    pad = torch.nn.functional.pad(m[None, None].float(), (2, 2, 2, 2), value=-1.0)[0, 0]
    windows = pad.unfold(0, 5, 1).unfold(1, 5, 1)
    interior = (windows.amax((-1, -2)) == windows.amin((-1, -2))) & (m != 255)
    assert interior.float().mean() > 0.1
    assert torch.all((grey[interior] - (m[interior] * 60 + 20)).abs() <= 2)


def test_crop_pads_mask_with_ignore_and_image_with_zero() -> None:
    mask = _block_mask(32, 64)
    tf = TrainTransform((32, 64), AugmentSpec(scale_range=(0.5, 0.5), **NO_JITTER))
    img, m = tf(_image_from(mask), mask, _g(1))
    pad = m == 255
    assert pad.sum() == 32 * 64 - 16 * 32
    assert torch.all(img[:, pad] == 0)
    assert torch.all(img[:, ~pad].abs() > 0)


def test_same_generator_same_result_and_jitter_leaves_mask() -> None:
    mask = _block_mask(64, 128)
    image = torch.randint(0, 256, (3, 64, 128), dtype=torch.uint8)
    tf = TrainTransform((32, 64), AugmentSpec(brightness=0.4, contrast=0.4, saturation=0.4))
    a, b, c = tf(image, mask, _g(5)), tf(image, mask, _g(5)), tf(image, mask, _g(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    plain = TrainTransform((32, 64), AugmentSpec(**NO_JITTER))(image, mask, _g(5))
    assert torch.equal(plain[1], a[1])  # jitter draws happen either way: same geometry
    assert not torch.equal(plain[0], a[0])


def test_jitter_factors_act_as_documented() -> None:
    tf = TrainTransform((4, 4), AugmentSpec(brightness=0.5, contrast=0.0, saturation=0.0))
    x = torch.full((3, 4, 4), 0.4)
    out = tf.jitter(x, _g(0))
    factor = out[0, 0, 0] / 0.4
    assert 0.5 <= factor <= 1.5 and torch.allclose(out, x * factor)
    grey = torch.rand(1, 4, 4).expand(3, 4, 4)
    sat = TrainTransform((4, 4), AugmentSpec(brightness=0, contrast=0, saturation=0.9))
    assert torch.allclose(sat.jitter(grey, _g(0)), grey, atol=1e-6)  # grey has no saturation


def test_val_transform_resizes_the_image_keeping_its_aspect_and_leaves_the_mask_native() -> None:
    mask = _block_mask(64, 128)
    img, m = ValTransform((32, 64))(_image_from(mask), mask)
    assert img.shape == (3, 32, 64) and img.dtype == torch.float32
    assert torch.equal(m, mask)  # scored at the label's native resolution
    img2, m2 = ValTransform(None)(_image_from(mask), mask)
    assert img2.shape == (3, 64, 128) and torch.equal(m2, mask)
    bdd = _block_mask(72, 128)  # 16:9 with a 2:1 size asked: covered, not distorted
    img3, m3 = ValTransform((32, 64))(_image_from(bdd), bdd)
    assert img3.shape == (3, 36, 64) and torch.equal(m3, bdd)


def test_normalize_denormalize_roundtrip() -> None:
    x = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8)
    back = denormalize(normalize(x))
    assert back.dtype == np.uint8 and back.shape == (5, 7, 3)
    assert np.array_equal(back, x.permute(1, 2, 0).numpy())
    with pytest.raises(ValueError, match="3xHxW"):
        denormalize(torch.zeros(1, 3, 4, 4))


def test_only_the_crop_window_is_resized_jittered_and_normalised(monkeypatch) -> None:
    import distillery.data.transforms as transforms

    resized: list[tuple[int, ...]] = []
    real_resize = transforms.resize_image

    def recording_resize(image: torch.Tensor, size) -> torch.Tensor:
        out = real_resize(image, size)
        resized.append(tuple(out.shape))
        return out

    monkeypatch.setattr(transforms, "resize_image", recording_resize)
    jittered: list[tuple[int, ...]] = []

    class Recording(TrainTransform):
        def jitter(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
            jittered.append(tuple(image.shape))
            return super().jitter(image, generator)

    mask = _block_mask(256, 512, block=32)  # cover scale 1/8, then x1.5: 48x96 scaled
    tf = Recording((32, 64), AugmentSpec(scale_range=(1.5, 1.5), hflip=False, **NO_JITTER))
    img, m = tf(_image_from(mask), mask, _g(3))
    assert img.shape == (3, 32, 64) and m.shape == (32, 64)
    assert jittered == [(3, 32, 64)]  # the crop only
    (_, rh, rw), *_ = resized
    assert rh * rw < 48 * 96  # less than the whole scaled image was resized

    # what a full resize followed by the crop gives, up to a sub-pixel shift at block edges
    full = transforms.resize_mask(mask, (48, 96))
    agree = max(
        (m == full[y : y + 32, x : x + 64]).float().mean().item()
        for y in range(17)
        for x in range(33)
    )
    assert agree > 0.9
