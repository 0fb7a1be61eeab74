"""Training stages (teacher, student, offline and online distillation) with Accelerate.

`run_stage` trains one stage (in this process or under ``accelerate launch``) and returns a
`StageResult`; `Progress` records reach `on_progress`; `StageCancelled` reports a stop request.
"""

from distillery.training.progress import Progress
from distillery.training.result import StageCancelled, StageResult
from distillery.training.stage import run_stage

__all__ = ["Progress", "StageCancelled", "StageResult", "run_stage"]
