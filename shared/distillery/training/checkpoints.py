"""Epoch checkpoints: ``<stage_dir>/ckpt/epoch-<n>/`` holds `accelerator.save_state` output plus
``trainer_state.json`` (epoch, global step, metrics history), written last: a folder without it
is an interrupted save and is never resumed from."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "trainer_state.json"
#: Epoch checkpoints kept on disk (older ones are deleted after each save).
KEEP_LAST = 2
_EPOCH_DIR = re.compile(r"^epoch-(\d+)$")


@dataclass
class TrainerState:
    """Where the loop stands after `epoch` (1-based) and `global_step` optimizer steps."""

    epoch: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    #: Scores of a frozen teacher (computed once; offline distillation).
    teacher_metrics: dict[str, Any] | None = None

    def save(self, directory: Path) -> None:
        tmp = directory / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, default=float))
        os.replace(tmp, directory / STATE_FILE)

    @classmethod
    def load(cls, directory: Path) -> TrainerState:
        path = directory / STATE_FILE
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise ValueError(f"{path}: not a readable trainer state ({e})") from None


def epoch_dir(ckpt_root: Path, epoch: int) -> Path:
    return ckpt_root / f"epoch-{epoch}"


def _epoch_dirs(ckpt_root: Path) -> list[tuple[int, Path]]:
    if not ckpt_root.is_dir():
        return []
    found = []
    for p in ckpt_root.iterdir():
        m = _EPOCH_DIR.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def complete_checkpoints(ckpt_root: Path) -> list[Path]:
    """Finished epoch checkpoints, oldest first."""
    return [p for _, p in _epoch_dirs(ckpt_root) if (p / STATE_FILE).is_file()]


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    done = complete_checkpoints(ckpt_root)
    return done[-1] if done else None


def remove_incomplete(ckpt_root: Path) -> None:
    """Delete epoch folders whose save was interrupted."""
    for _, p in _epoch_dirs(ckpt_root):
        if not (p / STATE_FILE).is_file():
            shutil.rmtree(p, ignore_errors=True)


def prune(ckpt_root: Path, keep: int = KEEP_LAST) -> None:
    """Keep the newest `keep` finished checkpoints; delete older ones."""
    for p in complete_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
