"""Training stages (teacher, student, offline and online distillation) with Accelerate.

`run_stage` trains one stage (in this process or under ``accelerate launch``) and returns a
`StageResult`; the caller's `StageHooks` get `Progress` records and checkpoint events;
`StageCancelled`, `StagePaused` and `StageDiverged` say how a stage stopped early.
"""

from distillery.training.hooks import StageHooks
from distillery.training.progress import Progress
from distillery.training.result import StageCancelled, StageDiverged, StagePaused, StageResult
from distillery.training.stage import run_stage

__all__ = [
    "Progress",
    "StageCancelled",
    "StageDiverged",
    "StageHooks",
    "StagePaused",
    "StageResult",
    "run_stage",
]
