"""`StageHooks`: what the caller of a training stage gives it, passed as one object.

The platform's stage runner and `distillery run` fill it in; a plain call needs none of it.
Under `accelerate launch` the parent process keeps the hooks: `resolve_root` is applied before
the launch, progress and checkpoint events come back through the progress file, and
`should_stop` / `should_pause` are polled by the parent, which signals the ranks. On several
machines (`train.num_nodes > 1`) `launch_nodes` starts the ranks and the parent follows them the
same way. `teacher_cache_dir` is passed on the command line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distillery.spec import DatasetRef
    from distillery.training.nodes import NodeLaunch, Ranks
    from distillery.training.progress import Progress


@dataclass(frozen=True)
class StageHooks:
    """- `on_progress(Progress)`: after optimizer steps (`kind="step"`) and at every epoch end
      (`kind="epoch"`, with the validation scores).
    - `on_checkpoint(global_step, dir)`: after a checkpoint folder is complete on disk.
    - `should_stop()`: polled every step; True stops the stage (`StageCancelled`), keeping the
      last checkpoint.
    - `should_pause()`: polled every step; True (preemption: SIGTERM) writes a checkpoint at
      this step and stops (`StagePaused`), so the stage resumes exactly there.
    - `resolve_root(DatasetRef)`: the local folder of a platform dataset (`dataset_id`).
    - `launch_nodes(NodeLaunch) -> Ranks`: start a stage on `train.num_nodes` machines (the
      platform's GPU worker: a Kubernetes Job); without it such a stage is refused.
    - `teacher_cache_dir`: where teacher caches are kept (`distillation.teacher_cache`; shared
      by every stage that may reuse one); default ``<workdir>/teacher_cache``.
    """

    on_progress: Callable[[Progress], None] | None = None
    on_checkpoint: Callable[[int, Path], None] | None = None
    should_stop: Callable[[], bool] | None = None
    should_pause: Callable[[], bool] | None = None
    resolve_root: Callable[[DatasetRef], Path] | None = None
    launch_nodes: Callable[[NodeLaunch], Ranks] | None = None
    teacher_cache_dir: Path | None = None

    def stop_requested(self) -> bool:
        return self.should_stop is not None and self.should_stop()

    def pause_requested(self) -> bool:
        return self.should_pause is not None and self.should_pause()


NO_HOOKS = StageHooks()
