"""A stage's ranks as the launcher supervises them, on this machine or on several.

`Ranks` is what the launcher needs of running processes: whether they ended (`poll`), stopping
them (`terminate`) and why they failed (`failure`). `LocalRanks` is the local ``accelerate
launch`` process group. On several machines the caller of the stage starts the ranks: it gets a
`NodeLaunch` through `StageHooks.launch_nodes` (the platform's GPU worker: a Kubernetes Job,
services/worker/multinode.py) and returns its own `Ranks`. Either way the ranks read the spec,
write progress, checkpoints and the result in the stage's work folder (shared by every machine),
so the launcher follows them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class Ranks(Protocol):
    """The processes of one launched stage."""

    def poll(self) -> int | None:
        """None while they run; once all ended, 0 if they succeeded, else non-zero."""

    def terminate(self) -> None:
        """Stop them all (and whatever was created to run them); safe to call twice."""

    def failure(self) -> str:
        """Why they failed (after `poll` returned non-zero): what the user reads on the stage."""


@dataclass(frozen=True)
class NodeLaunch:
    """A stage to start on `num_nodes` machines of `processes_per_node` processes each.

    Every machine runs `distillery.training.launch` under ``accelerate launch --num_machines
    num_nodes`` with `spec_json` (datasets already local roots) and writes in `workdir`, which
    all machines and the caller share; the main rank appends progress to `events_path` and
    watches `pause_flag` (see `launcher`)."""

    stage: str
    spec_json: str
    num_nodes: int
    processes_per_node: int
    mixed_precision: str
    workdir: Path
    events_path: Path
    pause_flag: Path
    teacher_path: Path | None = None
    tracker_group: str | None = None
