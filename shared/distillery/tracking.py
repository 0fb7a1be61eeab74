"""Experiment tracking with Weights & Biases: online, offline or disabled.

One `Tracker` per stage run. Runs of one experiment share a `group` (the experiment) and differ
by `job_type` (the stage); the spec is the run's config; wandb's system metrics stay on.

- ``online`` needs credentials (``WANDB_API_KEY`` or a netrc login); without them, or when the
  server cannot be reached within a short timeout, the run falls back to ``offline`` with a
  warning instead of prompting or hanging. ``wandb sync <run_dir>`` uploads it later.
- ``offline`` writes ``<run_dir>/wandb/offline-run-*/`` (``run-<id>.wandb`` + ``files/media``).
- ``disabled`` (or ``enabled=False``, e.g. on non-main processes) makes every method a no-op
  and writes nothing.

`iter_payloads` reads the records of a run file (`run_file_complete` waits on it; the tests'
reader, `tests/support/wandb_runs.py`, builds on it).
"""

from __future__ import annotations

import logging
import netrc
import os
import struct
import time
import warnings
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch

from distillery.data.labels import CLASS_NAMES, IGNORE_INDEX
from distillery.spec import TrackingSpec
from distillery.visualize import feature_grid, segmentation_panel

log = logging.getLogger(__name__)

#: Seconds `wandb.init` may wait for the server (online) or its local service before failing.
ONLINE_INIT_TIMEOUT_S = 20.0
OFFLINE_INIT_TIMEOUT_S = 60.0
#: Seconds `finish` waits for wandb to write the run file.
FLUSH_TIMEOUT_S = 30.0

MASK_CLASS_LABELS: dict[int, str] = {i: n for i, n in enumerate(CLASS_NAMES)} | {
    IGNORE_INDEX: "ignore"
}


def tracker_group(spec_name: str, experiment_id: str) -> str:
    """The wandb group of an experiment's runs: ``<spec name>-<first 8 chars of its id>``."""
    return f"{spec_name}-{experiment_id[:8]}"


def has_wandb_credentials() -> bool:
    """True if wandb could log in without a prompt: ``WANDB_API_KEY``,
    ``WANDB_IDENTITY_TOKEN_FILE``, or a netrc entry for the W&B host (``WANDB_BASE_URL``)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
    try:
        auth = netrc.netrc(path).authenticators(host or "")
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(auth and auth[2])


def _plain(value: Any) -> Any:
    """Tensors and numpy scalars -> Python numbers (wandb and JSON take those)."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.detach().cpu().tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


class Tracker:
    """A wandb run for one stage; every method is a no-op when tracking is off.

    Attributes: `url` (online runs), `run_id`, `run_dir` (the wandb run folder, e.g.
    ``<run_dir>/wandb/offline-run-*/``), `mode` (the mode in effect: online, offline, disabled).
    """

    def __init__(
        self,
        spec: TrackingSpec,
        run_dir: Path,
        name: str,
        group: str,
        config: dict[str, Any],
        job_type: str,
        enabled: bool = True,
    ) -> None:
        self.spec = spec
        self.url: str | None = None
        self.run_id: str | None = None
        self.run_dir: Path | None = None
        self.mode: str = "disabled"
        self._run: Any = None
        if not enabled or spec.mode == "disabled":
            return

        mode = spec.mode
        if mode == "online" and not has_wandb_credentials():
            self._warn(
                "tracking.mode is online but no W&B login was found (set WANDB_API_KEY or run "
                "`wandb login`); logging offline instead"
            )
            mode = "offline"
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        kwargs = dict(
            project=spec.project,
            entity=spec.entity,
            dir=str(run_dir),
            name=name,
            group=group,
            job_type=job_type,
            config=_plain(config),
        )
        if mode == "online":
            try:
                self._run = self._init("online", kwargs)
            except Exception as e:  # noqa: BLE001 - any failure to reach W&B: keep the run local
                self._warn(f"could not start an online W&B run ({e}); logging offline instead")
                mode = "offline"
        if self._run is None:
            self._run = self._init("offline", kwargs)
        self.mode = mode
        self.run_id = self._run.id
        self.run_dir = Path(self._run.settings.sync_dir)
        if mode == "online":
            self.url = self._run.url

    @staticmethod
    def _warn(message: str) -> None:
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        log.warning(message)

    @staticmethod
    def _init(mode: str, kwargs: dict[str, Any]) -> Any:
        import wandb

        settings = wandb.Settings(
            init_timeout=ONLINE_INIT_TIMEOUT_S if mode == "online" else OFFLINE_INIT_TIMEOUT_S,
            # stdout is not captured: several runs may live in one process (worker, tests)
            console="off",
        )
        # create_new: runs of several stages may be open at once in one process
        return wandb.init(mode=mode, reinit="create_new", settings=settings, **kwargs)

    # ----------------------------------------------------------------------------- state

    @property
    def active(self) -> bool:
        """True while a wandb run is open."""
        return self._run is not None

    @property
    def info(self) -> dict[str, Any] | None:
        """``{"id", "url", "dir"}`` of the run (what a stage stores), None when tracking is off."""
        if self.run_id is None:
            return None
        return {"id": self.run_id, "url": self.url, "dir": str(self.run_dir)}

    @property
    def wants_images(self) -> bool:
        return self.active and self.spec.log_images

    @property
    def wants_feature_maps(self) -> bool:
        return self.active and self.spec.log_feature_maps

    # ----------------------------------------------------------------------------- logging

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log scalars (tensors and numpy scalars are converted) at `step`."""
        if self._run is None:
            return
        self._run.log({k: _plain(v) for k, v in metrics.items()}, step=step)

    def log_segmentation(
        self,
        key: str,
        image: np.ndarray,
        gt: np.ndarray,
        pred: np.ndarray,
        step: int | None = None,
    ) -> None:
        """Log ``input | ground truth | prediction`` (Cityscapes colours over the image) under
        `key`, and the input with both masks (class names, toggled in the W&B UI) under
        ``<key>/masks``. `image` is HxWx3 uint8; `gt` and `pred` are HxW trainIds."""
        if not self.wants_images:
            return
        import wandb

        gt = np.asarray(gt).astype(np.uint8)
        pred = np.asarray(pred).astype(np.uint8)
        panel = segmentation_panel(image, gt, pred)
        masked = wandb.Image(
            np.asarray(image, dtype=np.uint8),
            masks={
                "ground_truth": {"mask_data": gt, "class_labels": MASK_CLASS_LABELS},
                "prediction": {"mask_data": pred, "class_labels": MASK_CLASS_LABELS},
            },
        )
        self._run.log(
            {
                key: wandb.Image(panel, caption="input | ground truth | prediction"),
                f"{key}/masks": masked,
            },
            step=step,
        )

    def log_feature_maps(
        self,
        key: str,
        teacher: Mapping[str, torch.Tensor] | None,
        student: Mapping[str, torch.Tensor],
        step: int | None = None,
    ) -> None:
        """Log one grid image: a row per tap, channel mean and 3-component PCA (as RGB) of the
        teacher's and the student's feature maps for one image (the first in a batch)."""
        if not self.wants_feature_maps:
            return
        import wandb

        grid = feature_grid(teacher, student)
        caption = "rows: taps; columns: channel mean, PCA (RGB)" + (
            " of teacher and student" if teacher else " of the model"
        )
        self._run.log({key: wandb.Image(grid, caption=caption)}, step=step)

    def log_table(
        self,
        key: str,
        columns: list[str],
        rows: list[list[Any]],
        step: int | None = None,
    ) -> None:
        """Log a `wandb.Table` (one row per list, values in `columns` order) under `key`; it is
        also the key's summary value, so the runs of a group can be compared in one chart."""
        if self._run is None:
            return
        import wandb

        table = wandb.Table(columns=columns, data=[[_plain(v) for v in row] for row in rows])
        self._run.log({key: table}, step=step)

    def log_pngs(self, prefix: str, paths: list[Path], step: int | None = None) -> None:
        """Log image files as ``<prefix>/<file stem>`` images (a report's plots)."""
        if self._run is None or not paths:
            return
        import wandb

        self._run.log({f"{prefix}/{p.stem}": wandb.Image(str(p)) for p in paths}, step=step)

    def summary(self, values: Mapping[str, Any]) -> None:
        """Set final values shown in the run table (e.g. best mIoU, latency)."""
        if self._run is None:
            return
        for k, v in values.items():
            self._run.summary[k] = _plain(v)

    def finish(self, exit_code: int | None = None) -> None:
        """Close the run (idempotent). A non-zero `exit_code` marks it failed."""
        if self._run is None:
            return
        run, self._run = self._run, None
        run.finish(exit_code=exit_code)
        # wandb-core writes the run file after finish() returns: wait, so that the folder is
        # complete for whoever reads, uploads or syncs it next
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        while self.run_dir is not None and not run_file_complete(self.run_dir):
            if time.monotonic() > deadline:
                self._warn(f"{self.run_dir}: wandb did not finish writing the run file")
                break
            time.sleep(0.05)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.finish(exit_code=1 if exc_type is not None else None)


# ------------------------------------------------------------------------ reading runs back

_LOG_MAGIC = b":W&B"
_LOG_HEADER = 7  # b":W&B", uint16 magic, uint8 version
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def iter_payloads(path: Path, strict: bool = True) -> Iterator[bytes]:
    """Record payloads of a LevelDB-style log: 32 KiB blocks of chunks with a 7-byte header
    (crc32, length, type); a record may span blocks (FIRST, MIDDLE..., LAST). With
    `strict=False` a truncated or corrupt tail (a file still being written) ends the scan."""
    data = Path(path).read_bytes()
    if data[:4] != _LOG_MAGIC:
        if strict or len(data) >= 4:
            raise ValueError(f"{path}: not a wandb run file")
        return
    pos, pending = _LOG_HEADER, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        if len(chunk) < length or zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            if strict:
                raise ValueError(f"{path}: truncated or corrupt record at byte {pos}")
            return
        pos += 7 + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        else:
            yield pending + chunk
            pending = b""


def run_file_complete(run_dir: Path, tail: int = 32) -> bool:
    """True once the run's ``.wandb`` file holds its exit record (among the last `tail`)."""
    from wandb.proto import wandb_internal_pb2 as pb

    files = list(Path(run_dir).glob("run-*.wandb"))
    if not files:
        return False
    for payload in list(iter_payloads(files[0], strict=False))[-tail:]:
        record = pb.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "exit":
            return True
    return False
