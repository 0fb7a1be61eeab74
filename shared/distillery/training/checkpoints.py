"""Checkpoints: ``<stage_dir>/ckpt/step-<n>/`` (n = optimizer steps done) holds
`accelerator.save_state` output plus ``trainer_state.json`` (epochs done, global step, steps done
in the current epoch, metrics history), written last: a folder without it is an interrupted save
and is never resumed from. One is written at every epoch end and whenever the stage is paused
(preemption) mid-epoch; resuming from a mid-epoch one skips the batches already trained on, in
the epoch's seeded order, so the run continues exactly."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "trainer_state.json"
#: Checkpoints kept on disk (older ones are deleted after each save).
KEEP_LAST = 2
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class TrainerState:
    """Where the loop stands: `epoch` epochs finished, `global_step` optimizer steps done, of which
    `epoch_step` in the unfinished epoch `epoch + 1` (0 at an epoch end)."""

    epoch: int = 0
    global_step: int = 0
    epoch_step: int = 0
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


def step_dir(ckpt_root: Path, global_step: int) -> Path:
    return ckpt_root / f"step-{global_step}"


def _step_dirs(ckpt_root: Path) -> list[tuple[int, Path]]:
    if not ckpt_root.is_dir():
        return []
    found = []
    for p in ckpt_root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def complete_checkpoints(ckpt_root: Path) -> list[Path]:
    """Finished checkpoints, oldest first."""
    return [p for _, p in _step_dirs(ckpt_root) if (p / STATE_FILE).is_file()]


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    done = complete_checkpoints(ckpt_root)
    return done[-1] if done else None


def remove_incomplete(ckpt_root: Path) -> None:
    """Delete checkpoint folders whose save was interrupted."""
    for _, p in _step_dirs(ckpt_root):
        if not (p / STATE_FILE).is_file():
            shutil.rmtree(p, ignore_errors=True)


def prune(ckpt_root: Path, keep: int = KEEP_LAST) -> None:
    """Keep the newest `keep` finished checkpoints; delete older ones."""
    for p in complete_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
