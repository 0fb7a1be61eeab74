"""What a training stage hands back: `StageResult` (also stored as ``<stage>/result.json``), or
how it stopped early: `StageCancelled` (`should_stop()`), `StagePaused` (`should_pause()`:
a checkpoint was written at that step) or `StageDiverged` (a non-finite loss or weights)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"


class StageCancelled(Exception):  # noqa: N818 - the platform's name for it
    """The stage stopped at a step because `should_stop()` returned True. The newest epoch
    checkpoint stays on disk, so running the stage again resumes from it."""

    def __init__(
        self, stage: str = "", epoch: int = 0, step: int = 0, checkpoint_dir: Path | None = None
    ) -> None:
        self.stage, self.epoch, self.step, self.checkpoint_dir = stage, epoch, step, checkpoint_dir
        kept = f"; kept checkpoint {checkpoint_dir}" if checkpoint_dir else "; no checkpoint yet"
        super().__init__(f"stage {stage} cancelled at epoch {epoch}, step {step}{kept}")

    def __reduce__(self) -> tuple[type, tuple[str, int, int, Path | None]]:
        return (type(self), (self.stage, self.epoch, self.step, self.checkpoint_dir))


class StagePaused(StageCancelled):
    """The stage wrote a checkpoint at this step and stopped because `should_pause()` returned
    True (the worker is being preempted); running it again resumes exactly there."""

    def __init__(
        self, stage: str = "", epoch: int = 0, step: int = 0, checkpoint_dir: Path | None = None
    ) -> None:
        super().__init__(stage, epoch, step, checkpoint_dir)
        self.args = (f"stage {stage} paused at epoch {epoch}, step {step}; {checkpoint_dir}",)


class StageDiverged(RuntimeError):
    """Training produced a non-finite loss or non-finite weights at global step `step`. The last
    checkpoint written before it (all finite) is kept; nothing non-finite is stored."""

    def __init__(self, stage: str = "", step: int = 0, loss: float = float("nan")) -> None:
        self.stage, self.step, self.loss = stage, step, loss
        super().__init__(f"diverged at step {step} (loss={loss})")

    def __reduce__(self) -> tuple[type, tuple[str, int, float]]:
        return (type(self), (self.stage, self.step, self.loss))


@dataclass
class StageResult:
    """A finished training stage.

    `metrics`: the final validation scores: ``miou``, ``pixel_accuracy``, ``iou`` ({class: IoU or
    None}), ``entropy`` (mean output entropy of the trained model, nats) and, where a teacher is
    involved, ``teacher_entropy`` (and for online distillation ``teacher_miou`` etc.).
    `history`: one dict per epoch (validation scores, mean training losses, lr, images/s).
    `model_path`: the exported model (`save_model_checkpoint`); `checkpoint_dir`: the accelerate
    state of the last epoch; `wandb_run`: ``{"id", "url", "dir"}`` or None; `params`: parameter
    count of the exported model.
    """

    stage: str
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    model_path: Path
    checkpoint_dir: Path
    wandb_run: dict[str, Any] | None = None
    params: int = 0
    #: Other exported files by role (online distillation also exports the trained teacher).
    extra_models: dict[str, Path] = field(default_factory=dict)
    #: What the stage ran with: device, num_threads, tf32, cudnn_benchmark, world_size, ...
    runtime: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["model_path"] = str(self.model_path)
        data["checkpoint_dir"] = str(self.checkpoint_dir)
        data["extra_models"] = {k: str(v) for k, v in self.extra_models.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StageResult:
        return cls(
            stage=data["stage"],
            metrics=data["metrics"],
            history=data["history"],
            model_path=Path(data["model_path"]),
            checkpoint_dir=Path(data["checkpoint_dir"]),
            wandb_run=data.get("wandb_run"),
            params=int(data.get("params", 0)),
            extra_models={k: Path(v) for k, v in data.get("extra_models", {}).items()},
            runtime=dict(data.get("runtime", {})),
        )

    def save(self, path: Path) -> None:
        """Write atomically (a crash never leaves half a result that marks the stage done)."""
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2, default=str))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> StageResult:
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"{path}: not a readable stage result ({e})") from None
