"""Progress of a training stage: the `Progress` record, and where it goes.

In one process, `on_progress` receives each record directly. Under `accelerate launch` the main
rank appends records (and checkpoint events) to a JSON-lines file that the parent process tails
(`ProgressFile`), so the caller sees the same callbacks either way.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO


@dataclass
class Progress:
    """`step` of `steps` optimizer steps in `epoch` of `epochs` (both 1-based).

    `kind` says what the record is: ``"step"`` records carry the training scalars (``loss``,
    each loss component, ``lr``, ``images_per_s``); the ``"epoch"`` record sent at the end of an
    epoch carries the validation scores (``miou``, ``pixel_accuracy``, ``iou/<class>``,
    ``entropy``, ...).
    """

    stage: str
    epoch: int
    epochs: int
    step: int
    steps: int
    metrics: dict[str, float] = field(default_factory=dict)
    kind: Literal["step", "epoch"] = "step"

    @property
    def epoch_end(self) -> bool:
        return self.kind == "epoch"


class ProgressReporter:
    """Sends `Progress` to a callback, a JSON-lines file and/or a tqdm bar (any may be absent).

    Only the main process reports; build it with `enabled=False` elsewhere.
    """

    def __init__(
        self,
        stage: str,
        *,
        on_progress: Callable[[Progress], None] | None = None,
        on_checkpoint: Callable[[int, Path], None] | None = None,
        events_path: Path | None = None,
        show_bar: bool = False,
        enabled: bool = True,
    ) -> None:
        self.stage = stage
        self.enabled = enabled
        self.on_progress = on_progress if enabled else None
        self.on_checkpoint = on_checkpoint if enabled else None
        self._file: TextIO | None = None
        if enabled and events_path is not None:
            events_path.parent.mkdir(parents=True, exist_ok=True)
            self._file = events_path.open("a", buffering=1)  # line-buffered
        self._bar: Any = None
        self._show_bar = enabled and show_bar

    def _update_bar(self, p: Progress) -> None:
        if not self._show_bar:
            return
        if self._bar is None:  # opened at the first step, resumed runs start part-way
            from tqdm.auto import tqdm

            done = (p.epoch - 1) * p.steps + p.step - 1
            self._bar = tqdm(total=p.epochs * p.steps, initial=done, desc=self.stage, unit="step")
        self._bar.update(1)
        loss = p.metrics.get("loss")
        if loss is not None:
            self._bar.set_postfix(epoch=p.epoch, loss=f"{loss:.3f}", refresh=False)

    def step(self, p: Progress) -> None:
        if not self.enabled:
            return
        if self.on_progress is not None:
            self.on_progress(p)
        self._write({"event": "progress", **asdict(p)})
        self._update_bar(p)

    def epoch_end(self, p: Progress) -> None:
        if not self.enabled:
            return
        if self.on_progress is not None:
            self.on_progress(p)
        self._write({"event": "progress", **asdict(p)})
        if self._bar is not None:
            self._bar.write(
                f"{self.stage} epoch {p.epoch}/{p.epochs}: mIoU {p.metrics['miou']:.4f}"
            )

    def checkpoint(self, global_step: int, directory: Path) -> None:
        if not self.enabled:
            return
        if self.on_checkpoint is not None:
            self.on_checkpoint(global_step, directory)
        self._write({"event": "checkpoint", "global_step": global_step, "dir": str(directory)})

    def diverged(self, step: int, loss: float) -> None:
        """Tell a parent process why the ranks are about to fail."""
        if self.enabled:
            self._write({"event": "diverged", "step": step, "loss": repr(loss)})

    def paused(self, global_step: int) -> None:
        """Tell a parent process that the ranks stop after a pause checkpoint."""
        if self.enabled:
            self._write({"event": "paused", "global_step": global_step})

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record, default=float) + "\n")


def interactive() -> bool:
    return sys.stderr.isatty()


class ProgressFile:
    """Tails a JSON-lines progress file written by `ProgressReporter` in another process and
    replays its records as callbacks."""

    def __init__(
        self,
        path: Path,
        on_progress: Callable[[Progress], None] | None,
        on_checkpoint: Callable[[int, Path], None] | None,
    ) -> None:
        self.path = path
        self.on_progress = on_progress
        self.on_checkpoint = on_checkpoint
        self._offset = 0
        self._partial = ""
        #: (step, loss) if the main rank reported a divergence.
        self.diverged: tuple[int, float] | None = None
        #: True once the main rank reported a pause checkpoint.
        self.paused = False

    def poll(self) -> int:
        """Replay the complete lines added since the last call; returns how many."""
        if not self.path.exists():
            return 0
        with self.path.open() as f:
            f.seek(self._offset)
            chunk = f.read()
            self._offset = f.tell()
        lines = (self._partial + chunk).split("\n")
        self._partial = lines.pop()  # an incomplete last line waits for the next poll
        n = 0
        for line in lines:
            if not line.strip():
                continue
            record = json.loads(line)
            event = record.pop("event")
            if event == "progress" and self.on_progress is not None:
                self.on_progress(Progress(**record))
            elif event == "checkpoint" and self.on_checkpoint is not None:
                self.on_checkpoint(int(record["global_step"]), Path(record["dir"]))
            elif event == "diverged":
                self.diverged = (int(record["step"]), float(record["loss"]))
            elif event == "paused":
                self.paused = True
            n += 1
        return n
