"""What a stage kind is: its name, queue, the stages it reads, when it is planned, and `run`.

A kind is one module in this package plus one line in `distillery.registry.STAGES` (the order
of those lines is the order stages run in). Kinds import nothing heavy at module level: the
gateway plans experiments with them and has no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from distillery.spec import ExperimentSpec
from distillery.stages import keys
from distillery.storage import Storage, put_dir

#: The queues a kind can ask for: training on GPU workers; sizing, profiling and other
#: measurements on the profiler worker (timings undisturbed by training).
Queue = Literal["gpu", "profiler"]


@dataclass
class StageInputs:
    """What a stage reads from the experiment's earlier stages, typed (never by stage name).

    Each kind fills in what it provides (`StageKind.provide`) once it has succeeded."""

    #: The student width the `size` stage chose (`student.model.width: auto`).
    student_width: int | None = None
    #: Exported models by stage name (artifact keys): `teacher`, `student`, `distill`.
    models: dict[str, str] = field(default_factory=dict)
    #: The stages of other experiments this one waited for (`lifecycle.Part`): a sweep's shared
    #: teacher for a child's `distill`, every member's stages for the sweep's `compare`.
    parts: list[Any] = field(default_factory=list)


@dataclass
class StageOutput:
    """What a stage hands back: its stored `result`, its exported model, wandb run, artifacts
    (kind, key, size) already written to storage."""

    result: dict[str, Any] | None = None
    model_key: str | None = None
    wandb: dict[str, Any] | None = None
    artifacts: list[tuple[str, str, int | None]] = field(default_factory=list)


@dataclass
class StageContext:
    """Everything `StageKind.run` gets: the spec (with inputs applied), where to work, storage
    (with retries), the stage's hooks and its last checkpoint key (resume)."""

    experiment_id: str
    stage: str
    spec: ExperimentSpec
    inputs: StageInputs
    workdir: Path
    storage: Storage
    checkpoint_key: str | None
    #: `StageHooks` for training (progress, checkpoint upload, stop and pause requests).
    hooks: Any
    tracker_group: str
    #: Run a storage call with bounded retries: `retrying(what, fn)`.
    retrying: Callable[[str, Callable[[], Any]], Any]

    def store_wandb(
        self, run: dict[str, Any] | None, part: str | None = None
    ) -> list[tuple[str, str, int | None]]:
        """Upload a wandb run folder under this stage's (or `part`'s) ``wandb/<run folder>``
        (an offline run is synced from there later); the artifact rows to add."""
        if not run or not run.get("dir") or not Path(run["dir"]).is_dir():
            return []
        run_dir = Path(run["dir"])
        key = keys.wandb_key(self.experiment_id, part or self.stage, run_dir.name)
        self.retrying(f"upload {key}", lambda: put_dir(self.storage, key, run_dir))
        return [("wandb", key, None)]


class StageKind:
    """One kind of stage. Subclasses set the class attributes and implement `run`."""

    name: ClassVar[str]
    queue: ClassVar[Queue] = "gpu"
    #: Kinds whose outputs this one reads, if they are planned (they run before it).
    reads: ClassVar[tuple[str, ...]] = ()
    #: The row label in the comparison table, if the kind has a row.
    table_label: ClassVar[str | None] = None
    #: `experiment`: planned for an experiment of a spec (`plan.planned_kinds`); `sweep`:
    #: planned once for a sweep's parent, after its members (`plan.sweep_kinds`).
    level: ClassVar[Literal["experiment", "sweep"]] = "experiment"
    #: Whether the stage runs when a stage it needs (`lifecycle.needed`) did not succeed (a
    #: sweep's comparison does; a child's `distill` fails with its shared teacher).
    after_failures: ClassVar[bool] = False

    def planned(self, spec: ExperimentSpec) -> bool:
        """Whether an experiment of `spec` runs this stage (default: listed in `spec.stages`)."""
        return self.name in spec.stages

    def num_nodes(self, spec: ExperimentSpec) -> int:
        """The machines this stage runs on (above 1 its work folder must be shared by them)."""
        return 1

    def prepare(self, spec: ExperimentSpec, inputs: StageInputs) -> ExperimentSpec:
        """The spec this stage runs with, given the earlier stages' outputs."""
        if inputs.student_width is not None:
            return spec.with_student_width(inputs.student_width)
        return spec

    def provide(
        self, result: dict[str, Any] | None, model_key: str | None, inputs: StageInputs
    ) -> None:
        """Add what this (succeeded) stage gives later stages to `inputs`."""
        if model_key is not None:
            inputs.models[self.name] = model_key

    def run(self, ctx: StageContext) -> StageOutput:
        raise NotImplementedError
