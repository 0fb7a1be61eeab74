"""The experiment spec: one pydantic contract for the CLI, gateway, workers and `distillery run`.

A spec names registered components only (models, losses, datasets, schedules). It can never
import or run code: YAML is read with ``yaml.safe_load`` and every name is checked against a
registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

NonNegFloat = Annotated[float, Field(ge=0)]


class _Strict(BaseModel):
    """Unknown fields are errors: a typo in a spec must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


#: (height, width) in pixels.
HW = tuple[PositiveInt, PositiveInt]


# ---------------------------------------------------------------------------------------- data


class DatasetRef(_Strict):
    """A dataset in its native layout: a local folder (`root`) or a platform `dataset_id`."""

    format: Literal["cityscapes", "bdd100k"]
    root: str | None = None
    dataset_id: str | None = None

    @model_validator(mode="after")
    def _one_location(self) -> DatasetRef:
        if (self.root is None) == (self.dataset_id is None):
            raise ValueError("give exactly one of root or dataset_id")
        return self


class SyntheticSpec(_Strict):
    """Generate the synthetic driving-scene data set (both native layouts) if it is absent."""

    num_train: PositiveInt = 64
    num_val: PositiveInt = 16
    image_size: HW = (64, 128)
    seed: int = 0


class AugmentSpec(_Strict):
    """Training augmentation (in torch, no torchvision). Validation only normalises."""

    scale_range: tuple[PositiveFloat, PositiveFloat] = (0.75, 1.5)
    hflip: bool = True
    brightness: NonNegFloat = 0.2
    contrast: NonNegFloat = 0.2
    saturation: NonNegFloat = 0.2

    @field_validator("scale_range")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] > v[1]:
            raise ValueError(f"scale_range must be (low, high) with low <= high, got {v}")
        return v


class DataSpec(_Strict):
    """Training and validation sets (any mix of formats and sizes) and how they are read."""

    train: list[DatasetRef] = Field(min_length=1)
    val: list[DatasetRef] = Field(min_length=1)
    train_split: str = "train"
    val_split: str = "val"
    #: (height, width) of training crops, in pixels.
    image_size: HW = (64, 128)
    #: Validation input: each image is resized, aspect ratio kept, to just cover this (h, w);
    #: null = `image_size` (the framing of the training crops at scale 1), `native` = no resize.
    #: Scores are always taken at the label's native resolution (logits upsampled to it).
    val_input_size: HW | Literal["native"] | None = None
    augment: AugmentSpec = AugmentSpec()
    num_workers: Annotated[int, Field(ge=0)] = 0
    synthetic: SyntheticSpec | None = None

    @property
    def val_resize(self) -> tuple[int, int] | None:
        """The (h, w) validation images are resized to cover, or None for native size."""
        if self.val_input_size == "native":
            return None
        return tuple(self.val_input_size or self.image_size)  # type: ignore[return-value]


# -------------------------------------------------------------------------------------- models


class ModelSpec(_Strict):
    """A registered segmentation model. The UNet family spans large teachers and tiny students."""

    arch: str = "unet"
    #: Encoder levels (each halves the resolution); the input must be divisible by 2**depth.
    depth: Annotated[int, Field(ge=1, le=6)] = 4
    #: Channels of the first level; doubles every level. `auto` (students only): the profiler
    #: picks the largest width whose latency fits `profiling.latency_budget_ms`.
    width: PositiveInt | Literal["auto"] = 16
    norm: Literal["batch", "group"] = "batch"
    upsample: Literal["transpose", "bilinear"] = "bilinear"
    separable: bool = False
    num_classes: PositiveInt = 19
    #: A checkpoint to start from (a teacher given here skips teacher training).
    checkpoint: str | None = None

    @field_validator("arch")
    @classmethod
    def _registered(cls, v: str) -> str:
        from distillery.registry import MODELS

        return MODELS.check(v)


# -------------------------------------------------------------------------------------- losses


class _Term(_Strict):
    weight: NonNegFloat = 1.0


#: Per-class loss weights computed from the training set's label statistics (or none).
ClassWeighting = Literal["none", "median_frequency", "enet"]


class CrossEntropyTerm(_Term):
    """Pixel cross-entropy, ignore index 255; optional class weights and label smoothing."""

    kind: Literal["cross_entropy"] = "cross_entropy"
    class_weights: ClassWeighting = "none"
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0


class FocalTerm(_Term):
    kind: Literal["focal"] = "focal"
    gamma: NonNegFloat = 2.0
    class_weights: ClassWeighting = "none"


class OhemTerm(_Term):
    kind: Literal["ohem"] = "ohem"
    class_weights: ClassWeighting = "none"
    #: Pixels whose probability of the true class is below `threshold` are hard.
    threshold: Annotated[float, Field(gt=0, le=1)] = 0.7
    #: ... but at least this fraction of valid pixels is always kept.
    min_kept_fraction: Annotated[float, Field(gt=0, le=1)] = 0.1


class ConfidencePenaltyTerm(_Term):
    """Entropy bonus for teachers: loss = -beta * mean pixel entropy (a softer, richer teacher)."""

    kind: Literal["confidence_penalty"] = "confidence_penalty"


class LogitKDTerm(_Term):
    kind: Literal["logit_kd"] = "logit_kd"
    temperature: PositiveFloat = 4.0


class ChannelWiseKDTerm(_Term):
    kind: Literal["channel_wise_kd"] = "channel_wise_kd"
    temperature: PositiveFloat = 4.0
    #: `logits` or a feature tap; on a tap, a 1x1 adapter maps student to teacher channels.
    tap: str = "logits"


class DISTTerm(_Term):
    """DIST (Huang et al. 2022): Pearson-correlation relations between the class probabilities,
    ``T^2 (beta * inter-class + gamma * intra-class)``; see `distillery.losses.dist`."""

    kind: Literal["dist"] = "dist"
    temperature: PositiveFloat = 1.0
    beta: NonNegFloat = 1.0
    gamma: NonNegFloat = 1.0


class FeatureMSETerm(_Term):
    kind: Literal["feature_mse"] = "feature_mse"
    student_tap: str
    teacher_tap: str


class AttentionTransferTerm(_Term):
    kind: Literal["attention_transfer"] = "attention_transfer"
    student_tap: str
    teacher_tap: str


LossTerm = Annotated[
    CrossEntropyTerm
    | FocalTerm
    | OhemTerm
    | ConfidencePenaltyTerm
    | LogitKDTerm
    | ChannelWiseKDTerm
    | DISTTerm
    | FeatureMSETerm
    | AttentionTransferTerm,
    Field(discriminator="kind"),
]

SUPERVISED_KINDS = {"cross_entropy", "focal", "ohem", "confidence_penalty"}
DISTILL_KINDS = {"logit_kd", "channel_wise_kd", "dist", "feature_mse", "attention_transfer"}


# ------------------------------------------------------------------------------------ training


class TrainSpec(_Strict):
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 8
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: PositiveFloat = 2e-3
    weight_decay: NonNegFloat = 1e-4
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    schedule: str = "poly"
    poly_power: PositiveFloat = 0.9
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    grad_accum_steps: PositiveInt = 1
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    #: Processes for `accelerate launch` (GPUs on a GPU node; gloo processes on a CPU).
    num_processes: PositiveInt = 1
    #: Cap on optimizer steps per epoch (tiny smoke runs); null = the whole training set.
    max_steps_per_epoch: PositiveInt | None = None
    grad_clip_norm: PositiveFloat | None = None
    #: Loss components are read from the device (a host-device sync), logged and reported every
    #: this many optimizer steps (and at the end of each epoch); other steps never wait on it.
    log_every_steps: PositiveInt = 1
    #: Intra-op CPU threads of each training process; null = OMP_NUM_THREADS if set, else the
    #: cores divided among the processes less one per loader worker. Recorded in the result.
    num_threads: PositiveInt | None = None
    #: CUDA: TF32 for float32 matmuls and convolutions (Ampere and newer; ~10-bit mantissa,
    #: much faster). Recorded in the result; mixed precision is unaffected.
    tf32: bool = True
    #: With num_processes > 1, BatchNorm statistics over the global batch of all processes
    #: (SyncBatchNorm on CUDA, an all-reduce on gloo) instead of each process's 1-2 crops.
    sync_batchnorm: bool = True

    @field_validator("schedule")
    @classmethod
    def _registered(cls, v: str) -> str:
        from distillery.schedules import SCHEDULES

        return SCHEDULES.check(v)


class ModelStageSpec(_Strict):
    """A model and how it is trained on its own."""

    model: ModelSpec = ModelSpec()
    train: TrainSpec = TrainSpec()
    losses: list[LossTerm] = Field(default_factory=lambda: [CrossEntropyTerm()], min_length=1)

    @field_validator("losses")
    @classmethod
    def _supervised_only(cls, v: list[Any]) -> list[Any]:
        for i, term in enumerate(v):
            if term.kind not in SUPERVISED_KINDS:
                raise ValueError(
                    f"losses.{i}: {term.kind!r} needs a teacher; put it under distillation.losses"
                )
        return v


class AlternateSpec(_Strict):
    """Alternate every `every` steps or epochs.

    - `objectives`: the student trains on the supervised terms, then on the distillation terms.
    - `models` (online mode): teacher and student take turns being updated.
    """

    between: Literal["objectives", "models"] = "objectives"
    every: PositiveInt = 1
    unit: Literal["steps", "epochs"] = "epochs"


class DistillationSpec(_Strict):
    mode: Literal["offline", "online"] = "offline"
    #: Weighted sum of supervised and distillation terms for the student.
    losses: list[LossTerm] = Field(
        default_factory=lambda: [CrossEntropyTerm(), LogitKDTerm()], min_length=1
    )
    #: Online mode: the teacher's own objective (supervised terms + a mutual logit_kd term).
    teacher_losses: list[LossTerm] = Field(
        default_factory=lambda: [CrossEntropyTerm(), LogitKDTerm(weight=0.5, temperature=1.0)]
    )
    #: Training settings; default: the student's.
    train: TrainSpec | None = None
    alternate: AlternateSpec | None = None

    @model_validator(mode="after")
    def _checks(self) -> DistillationSpec:
        if not any(t.kind in DISTILL_KINDS for t in self.losses):
            raise ValueError(
                "losses: give at least one distillation term ("
                + ", ".join(sorted(DISTILL_KINDS))
                + ")"
            )
        if self.alternate and self.alternate.between == "models" and self.mode != "online":
            raise ValueError("alternate.between=models needs mode=online")
        return self


# ----------------------------------------------------------------------------------- profiling


class ProfilingSpec(_Strict):
    #: (height, width) at which latency is measured (and at which the budget applies).
    input_size: HW = (64, 128)
    batch_sizes: list[PositiveInt] = Field(default_factory=lambda: [1])
    device: Literal["cpu", "cuda", "auto"] = "auto"
    #: Precision of a variant that names none, and the precision at which the budget applies.
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    #: `runtime[+precision]`: runtime eager | channels_last | compile | onnx, precision fp32 |
    #: bf16 | fp16 (autocast). A bare precision (`bf16`) means `eager+bf16`.
    variants: list[str] = Field(default_factory=lambda: ["eager"], min_length=1)
    #: Untimed calls before timing (at least 1 with a `compile` variant: its first call compiles,
    #: and is reported apart as `latency_ms.first_call`).
    warmup: Annotated[int, Field(ge=0)] = 3
    min_repeats: PositiveInt = 5
    max_repeats: PositiveInt = 50
    #: Stop repeating once the (robust) coefficient of variation of the latency is below this.
    target_cv: PositiveFloat = 0.05
    #: Stop repeating one measurement after this many seconds (once `min_repeats` are done).
    max_time_s: PositiveFloat | None = 30.0
    latency_budget_ms: PositiveFloat | None = None
    #: Batch size at which the budget applies.
    budget_batch_size: PositiveInt = 1
    #: The latency statistic compared with the budget.
    budget_statistic: Literal["p50", "p90", "p99", "mean"] = "p50"
    #: Widths tried by `student.model.width: auto`, largest that fits wins.
    auto_widths: list[PositiveInt] = Field(
        default_factory=lambda: [4, 8, 12, 16, 24, 32, 48, 64], min_length=1
    )

    @field_validator("variants")
    @classmethod
    def _known_variants(cls, v: list[str]) -> list[str]:
        from distillery.profiler.variants import parse_variant

        for name in v:
            parse_variant(name)  # raises ValueError naming the allowed runtimes and precisions
        if len(set(v)) != len(v):
            raise ValueError(f"variants repeat a name: {v}")
        return v

    @model_validator(mode="after")
    def _repeats(self) -> ProfilingSpec:
        compiled = [v for v in self.variants if v.split("+")[0].strip() == "compile"]
        if compiled and self.warmup < 1:
            raise ValueError(
                f"warmup is 0 but {', '.join(compiled)} compiles on its first call: give "
                "warmup >= 1 (the compile time is reported as latency_ms.first_call)"
            )
        if self.min_repeats > self.max_repeats:
            raise ValueError(
                f"min_repeats ({self.min_repeats}) must be <= max_repeats ({self.max_repeats})"
            )
        return self


# ------------------------------------------------------------------------------------ tracking


class TrackingSpec(_Strict):
    #: wandb mode; `online` needs WANDB_API_KEY. `disabled` logs nothing.
    mode: Literal["online", "offline", "disabled"] = "offline"
    project: str = "distillery"
    entity: str | None = None
    log_images: bool = True
    #: Log feature maps at every tap for one fixed validation image.
    log_feature_maps: bool = True


# --------------------------------------------------------------------------------------- sweep


class SweepConfiguration(_Strict):
    """A child: the base spec with these overrides (dotted path -> value)."""

    name: str = Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    overrides: dict[str, Any] = Field(default_factory=dict)


class SweepSpec(_Strict):
    """Children of one spec (see `distillery.sweeps`): the product of `grid`, plus the listed
    `configurations`, each trained once per seed of `seeds` (student seeds; the teacher keeps
    the spec's `seed`). Stages identical across children are planned once."""

    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    #: Dotted paths into the base spec (list items by index) -> the values to try.
    grid: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(default_factory=dict)
    configurations: list[SweepConfiguration] = Field(default_factory=list)
    #: Also compare each child with a student-alone baseline given as much training time as
    #: its distillation took (more epochs at the same seed): gains at equal compute.
    compute_matched_baseline: bool = False

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds repeat a value: {v}")
        return v


# ---------------------------------------------------------------------------------- experiment

#: The stages a spec runs by default (`size` is planned by itself for a width `auto` student).
DEFAULT_STAGES = ("teacher", "student", "distill", "profile")


class ExperimentSpec(_Strict):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    seed: int = 0
    data: DataSpec
    teacher: ModelStageSpec = ModelStageSpec(model=ModelSpec(width=32))
    student: ModelStageSpec = ModelStageSpec(model=ModelSpec(width=8))
    distillation: DistillationSpec = DistillationSpec()
    profiling: ProfilingSpec = ProfilingSpec()
    tracking: TrackingSpec = TrackingSpec()
    #: Stage kinds to run (`distillery.registry.STAGES`), run in the registry's order;
    #: `student` is the baseline (the student trained alone).
    stages: list[str] = Field(default_factory=lambda: list(DEFAULT_STAGES))

    @field_validator("stages")
    @classmethod
    def _registered_stages(cls, v: list[str]) -> list[str]:
        from distillery.registry import STAGES

        for name in v:
            STAGES.check(name)
        return [name for name in STAGES.in_order() if name in v]

    #: Children of this spec (a grid and configurations, times seeds); none = one experiment.
    sweep: SweepSpec | None = None

    @field_validator("sweep")
    @classmethod
    def _sweep_expands(cls, v: SweepSpec | None, info: ValidationInfo) -> SweepSpec | None:
        """Every grid path exists and every child is a valid spec (errors located at `sweep`)."""
        if v is None or set(cls.model_fields) - {"sweep"} - set(info.data):
            return v  # no sweep, or another field is invalid (its own error says why)
        if not {"student", "distill"} <= set(info.data["stages"]):
            raise ValueError(
                "the children compare distilled students with the baseline; stages must "
                "include student and distill"
            )
        from distillery.sweeps import check_sweep

        check_sweep(cls.model_construct(**{**info.data, "sweep": None}), v)
        return v

    @model_validator(mode="after")
    def _checks(self) -> ExperimentSpec:
        if self.teacher.model.width == "auto":
            raise ValueError("teacher.model.width: auto is only for students")
        if self.student.model.width == "auto" and self.profiling.latency_budget_ms is None:
            raise ValueError("student.model.width: auto needs profiling.latency_budget_ms")
        factor = 2 ** max(self.teacher.model.depth, self.student.model.depth)
        for field, (h, w) in (
            ("data.image_size", self.data.image_size),
            ("profiling.input_size", self.profiling.input_size),
        ):
            if h % factor or w % factor:
                raise ValueError(
                    f"{field} {h}x{w} must be divisible by {factor} (2**depth of the UNets)"
                )
        return self

    def with_num_threads(self, threads: int) -> ExperimentSpec:
        """This spec with `train.num_threads` set for every training stage."""

        def set_threads(train: TrainSpec) -> TrainSpec:
            return train.model_copy(update={"num_threads": threads})

        teacher = self.teacher.model_copy(update={"train": set_threads(self.teacher.train)})
        student = self.student.model_copy(update={"train": set_threads(self.student.train)})
        d = self.distillation
        distillation = d.model_copy(update={"train": set_threads(d.train) if d.train else None})
        return self.model_copy(
            update={"teacher": teacher, "student": student, "distillation": distillation}
        )

    def with_student_width(self, width: int) -> ExperimentSpec:
        """This spec with the student's `auto` width resolved."""
        student = self.student.model_copy(
            update={"model": self.student.model.model_copy(update={"width": width})}
        )
        return self.model_copy(update={"student": student})

    @property
    def distill_train(self) -> TrainSpec:
        return self.distillation.train or self.student.train


class SpecError(ValueError):
    """A spec file that cannot be read or validated; the message names the file and fields."""


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(spec)"
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def load_spec(path: str | Path) -> ExperimentSpec:
    """Read a YAML or JSON spec with `yaml.safe_load` (no tags that run code)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML/JSON: {e}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a spec is a mapping, got {type(raw).__name__}")
    try:
        return ExperimentSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(f"{path}: invalid spec\n{format_validation_error(e)}") from None
