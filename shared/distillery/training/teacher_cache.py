"""Teacher outputs computed once and shared by every student that distils from the same teacher
on the same data (`distillation.teacher_cache`).

Before an offline distill stage trains, the frozen teacher runs once over every training image at
the augmentation's base framing (the image scaled to just cover the crop size, scale factor 1,
no photometric jitter), unflipped and mirrored; its logits, downsampled by `stride`, are stored
as fp16, one ``.npy`` file per image (`distillery.data.teacher_maps`). Training then cuts each
crop's teacher logits out of the cached map with the crop's own scale, offset and flip instead of
running the teacher. It is an approximation: the teacher saw the whole image at the base scale
(its context beyond the crop included) and not the jittered colours; at scale 1 without jitter
the cut equals a live forward up to the crop's border context and fp16.

Layout: ``<root>/<key>/cache.json`` (written last) and ``<root>/<key>/<k>/<index>.npy`` for
image `index` of training data set `k`. `key` is the SHA-256 of the teacher model file's bytes,
the training data's identity (format, split, each image's relative path, size and mtime), the
crop size, the stride and the format version: any run with the same teacher and data (the
children of a sweep, a resumed stage, another experiment on the same worker) reuses it. A cache
is written in ``<root>/.tmp-<key>-<host>-<pid>`` and renamed into place when complete, so a
killed precompute never leaves a folder under `key`; its temporary folder is removed by the next
precompute on that host once its process is gone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distillery.data.datasets import SegmentationDataset
from distillery.data.teacher_maps import TeacherMaps, map_path
from distillery.data.transforms import normalize, resize_image
from distillery.inference import input_hw, segment

log = logging.getLogger(__name__)

#: Bumped when what a cache holds changes (its key then changes too).
CACHE_VERSION = 1
MANIFEST = "cache.json"
_TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class TeacherCache:
    """A complete cache folder. `computed`: this call ran the teacher (False: reused)."""

    folder: Path
    key: str
    counts: tuple[int, ...]
    computed: bool = False
    seconds: float = 0.0

    def maps(self, k: int) -> TeacherMaps:
        """The maps of training data set `k`."""
        return TeacherMaps(self.folder / str(k), self.counts[k])

    def describe(self) -> dict[str, object]:
        """What a stage records about it (`result.json` runtime)."""
        return {
            "key": self.key,
            "folder": str(self.folder),
            "computed": self.computed,
            "seconds": round(self.seconds, 3),
            "images": sum(self.counts),
        }


def data_identity(ds: SegmentationDataset) -> dict[str, object]:
    """What identifies a data set's training images: format, split and, per image, its path
    relative to the root, size and modification time (the bytes are not read)."""
    images = []
    for sample in ds.samples:
        st = sample.image.stat()
        images.append([str(sample.image.relative_to(ds.root)), st.st_size, st.st_mtime_ns])
    return {"format": ds.format, "split": ds.split, "images": images}


def cache_key(
    teacher_file: Path,
    datasets: Sequence[SegmentationDataset],
    image_size: Sequence[int],
    stride: int,
) -> str:
    """SHA-256 of everything a cache's contents depend on (see the module docstring)."""
    h = hashlib.sha256()
    with open(teacher_file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    meta = {
        "version": CACHE_VERSION,
        "data": [data_identity(ds) for ds in datasets],
        "image_size": [int(v) for v in image_size],
        "stride": int(stride),
    }
    h.update(json.dumps(meta, sort_keys=True).encode())
    return h.hexdigest()


def base_framing(ds: SegmentationDataset, index: int, image_size: Sequence[int]) -> torch.Tensor:
    """Image `index` as the teacher sees it for the cache: scaled (bilinear, aspect ratio kept)
    to just cover `image_size`, normalised; the framing `TrainTransform` draws scales around."""
    image = torch.from_numpy(ds.load_image(index)).permute(2, 0, 1).float().div_(255.0)
    return normalize(resize_image(image, input_hw(image.shape[-2:], image_size)))


def teacher_maps(
    teacher: nn.Module,
    images: torch.Tensor,
    stride: int,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> torch.Tensor:
    """fp16 ``(N, 2, C, ceil(h/stride), ceil(w/stride))``: the teacher's logits of each image
    ``(N, 3, h, w)`` and of its mirror image mirrored back, downsampled by `stride`."""
    n, _, h, w = images.shape
    with torch.inference_mode(), autocast():
        logits = segment(teacher, torch.cat([images, images.flip(-1)]), (h, w))
    logits = torch.stack([logits[:n], logits[n:].flip(-1)], dim=1)  # N, 2, C, h, w
    if stride > 1:
        c = logits.shape[2]
        small = resize_image(logits.reshape(n * 2 * c, h, w), (-(-h // stride), -(-w // stride)))
        logits = small.reshape(n, 2, c, *small.shape[-2:])
    return logits.half().cpu()


def ensure_teacher_cache(
    teacher: nn.Module,
    teacher_file: Path,
    datasets: Sequence[SegmentationDataset],
    image_size: Sequence[int],
    stride: int,
    root: Path,
    *,
    device: torch.device | str = "cpu",
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    batch_size: int = 8,
    on_image: Callable[[int, int], None] | None = None,
) -> TeacherCache:
    """The complete cache of `teacher` (its exported model `teacher_file`) on `datasets`:
    found under `root`, else computed (`on_image(done, total)` after each batch) and renamed
    into place."""
    root = Path(root)
    key = cache_key(teacher_file, datasets, image_size, stride)
    counts = tuple(len(ds) for ds in datasets)
    found = _complete(root / key, key, counts)
    if found is not None:
        log.info("teacher cache %s: reused (%d images)", found.folder, sum(counts))
        return found
    root.mkdir(parents=True, exist_ok=True)
    remove_abandoned(root)
    tmp = root / f"{_TMP_PREFIX}{key}-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    start = time.perf_counter()
    total, done = sum(counts), 0
    log.info("teacher cache %s: computing %d images x 2 flips", root / key, total)
    net = teacher.eval()
    for k, ds in enumerate(datasets):
        (tmp / str(k)).mkdir(parents=True)
        for batch in _same_size_batches(ds, image_size, batch_size):
            images = torch.stack([img for _, img in batch]).to(device)
            maps = teacher_maps(net, images, stride, autocast).numpy()
            for (index, _), m in zip(batch, maps, strict=True):
                np.save(map_path(tmp / str(k), index), m)
            done += len(batch)
            if on_image is not None:
                on_image(done, total)
            if done == total or done % max(1, math.ceil(total / 10)) < len(batch):
                log.info("teacher cache: %d/%d images", done, total)
    manifest = {
        "key": key,
        "version": CACHE_VERSION,
        "teacher_file": str(teacher_file),
        "counts": list(counts),
        "image_size": [int(v) for v in image_size],
        "stride": int(stride),
        "dtype": "float16",
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    seconds = time.perf_counter() - start
    try:
        tmp.rename(root / key)
    except OSError:  # another process finished the same cache first: use that one
        shutil.rmtree(tmp, ignore_errors=True)
    found = _complete(root / key, key, counts)
    if found is None:
        raise RuntimeError(f"teacher cache {root / key}: incomplete after it was written")
    log.info("teacher cache %s: %d images in %.1f s", found.folder, total, seconds)
    return TeacherCache(found.folder, key, counts, computed=True, seconds=seconds)


class PrecomputeBar:
    """A tqdm bar of a precompute's images (`on_image` of `ensure_teacher_cache`), opened at
    its first report; `close` it after."""

    def __init__(self) -> None:
        self._bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc="teacher cache", unit="img")
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def attach_teacher_cache(datasets: Sequence[SegmentationDataset], cache: TeacherCache) -> None:
    """Give every training item its cut teacher logits (``teacher_logits``) from `cache`."""
    for k, ds in enumerate(datasets):
        ds.use_teacher_maps(cache.maps(k))


def remove_abandoned(root: Path) -> list[Path]:
    """Remove the temporary folders of precomputes on this host whose process is gone (killed);
    returns them."""
    host = socket.gethostname()
    removed = []
    for path in Path(root).glob(f"{_TMP_PREFIX}*"):
        owner, _, pid = path.name.rpartition("-")
        if not owner.endswith(f"-{host}") or not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _complete(folder: Path, key: str, counts: tuple[int, ...]) -> TeacherCache | None:
    """The cache in `folder` if its manifest says it is `key` with these image counts."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if manifest.get("key") != key or tuple(manifest.get("counts", ())) != counts:
        return None
    return TeacherCache(folder, key, counts)


def _same_size_batches(
    ds: SegmentationDataset, image_size: Sequence[int], batch_size: int
) -> Iterator[list[tuple[int, torch.Tensor]]]:
    """Consecutive images of `ds` at their base framing, in batches of one size (read as
    they are needed)."""
    batch: list[tuple[int, torch.Tensor]] = []
    for index in range(len(ds)):
        img = base_framing(ds, index, image_size)
        if batch and (len(batch) == batch_size or batch[0][1].shape != img.shape):
            yield batch
            batch = []
        batch.append((index, img))
    if batch:
        yield batch
