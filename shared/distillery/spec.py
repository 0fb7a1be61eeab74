"""The experiment spec: one pydantic contract for the CLI, gateway, workers and `distillery run`.

A spec names registered components only (models, losses, datasets, schedules). It can never
import or run code: YAML is read with ``yaml.safe_load`` and every name is checked against a
registry.

Every number has bounds a shared platform can live with (`Field(le=...)`, listed in the JSON
schema): epochs <= 10000, image sides <= 4096, widths <= 256, depth <= 6, batch sizes <= 4096,
num_processes <= 64, temperatures <= 100, loss weights <= 1000, lr <= 10. Integers and booleans
are strict (`epochs: true` or `epochs: "5"` is an error), floats are finite, strings and lists
have a maximum length, and an error message quotes at most a short prefix of a bad value
(`short`). Validation never imports torch: feature taps are checked with `model_taps`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)


def fresh(cls: type[BaseModel]) -> Any:
    """A sub-spec's default: a new `cls()` per spec (a model instance given as the default is
    deep-copied on every validation instead, most of the time a spec took to validate), shown as
    the default in the JSON schema as before."""
    return Field(default_factory=cls, json_schema_extra={"default": cls().model_dump(mode="json")})


# Integers are strict (`true`, `5.0` or `"5"` is not an integer); floats accept integers but not
# booleans or strings, and refuse NaN and infinities; booleans are strict.
Bool = Annotated[bool, Strict()]

#: Largest image side (height or width) in pixels; Cityscapes is 1024x2048.
MAX_IMAGE_SIDE = 4096
#: Largest UNet base width (channels of the first level).
MAX_WIDTH = 256
#: Largest epoch count, batch size, number of processes.
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 4096
MAX_PROCESSES = 64
#: Names, folders and keys are at most this long.
MAX_NAME = 200
MAX_PATH = 1024
#: Largest sweep: configurations (grid product plus listed ones), each run once per seed.
MAX_SWEEP_CHILDREN = 256
#: How much of a bad value an error message quotes.
ECHO_CHARS = 40


def short(value: object, limit: int = ECHO_CHARS) -> str:
    """`repr(value)`, cut to `limit` characters (errors never echo a huge value back)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


class _Strict(BaseModel):
    """Unknown fields are errors: a typo in a spec must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


#: One image side in pixels.
Side = Annotated[int, Strict(), Field(ge=1, le=MAX_IMAGE_SIDE)]
#: (height, width) in pixels, each at most `MAX_IMAGE_SIDE`.
HW = tuple[Side, Side]
PathStr = Annotated[str, Field(min_length=1, max_length=MAX_PATH)]
Split = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
Tap = Annotated[str, Field(min_length=1, max_length=64)]
Weight = Annotated[float, Strict(), Field(ge=0, le=1000, allow_inf_nan=False)]
Temperature = Annotated[float, Strict(), Field(gt=0, le=100, allow_inf_nan=False)]
Fraction = Annotated[float, Strict(), Field(ge=0, le=1, allow_inf_nan=False)]
Seed = Annotated[int, Strict(), Field(ge=0, le=2**32 - 1)]


# ---------------------------------------------------------------------------------------- data


class DatasetRef(_Strict):
    """A dataset in its native layout: a local folder (`root`) or a platform `dataset_id`."""

    format: Literal["cityscapes", "bdd100k"]
    #: A folder; on the platform only inside `DISTILLERY_ALLOWED_DATA_ROOTS`.
    root: PathStr | None = None
    #: A dataset's id (`GET /datasets`): letters, digits, `.`, `_`, `-`.
    dataset_id: (
        Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")] | None
    ) = None

    @model_validator(mode="after")
    def _one_location(self) -> DatasetRef:
        if (self.root is None) == (self.dataset_id is None):
            raise ValueError("give exactly one of root or dataset_id")
        return self


class SyntheticSpec(_Strict):
    """Generate the synthetic driving-scene data set (both native layouts) if it is absent."""

    num_train: Annotated[int, Strict(), Field(ge=1, le=10_000)] = 64
    num_val: Annotated[int, Strict(), Field(ge=1, le=10_000)] = 16
    image_size: tuple[
        Annotated[int, Strict(), Field(ge=1, le=2048)],
        Annotated[int, Strict(), Field(ge=1, le=2048)],
    ] = (64, 128)
    seed: Seed = 0


class AugmentSpec(_Strict):
    """Training augmentation (in torch, no torchvision). Validation only normalises."""

    scale_range: tuple[
        Annotated[float, Strict(), Field(gt=0, le=4, allow_inf_nan=False)],
        Annotated[float, Strict(), Field(gt=0, le=4, allow_inf_nan=False)],
    ] = (0.75, 1.5)
    hflip: Bool = True
    brightness: Fraction = 0.2
    contrast: Fraction = 0.2
    saturation: Fraction = 0.2

    @field_validator("scale_range")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] > v[1]:
            raise ValueError(f"scale_range must be (low, high) with low <= high, got {short(v)}")
        return v


class DataSpec(_Strict):
    """Training and validation sets (any mix of formats and sizes) and how they are read."""

    train: list[DatasetRef] = Field(min_length=1, max_length=16)
    val: list[DatasetRef] = Field(min_length=1, max_length=16)
    train_split: Split = "train"
    val_split: Split = "val"
    #: (height, width) of training crops, in pixels.
    image_size: HW = (64, 128)
    #: Validation input: each image is resized, aspect ratio kept, to just cover this (h, w);
    #: null = `image_size` (the framing of the training crops at scale 1), `native` = no resize.
    #: Scores are always taken at the label's native resolution (logits upsampled to it).
    val_input_size: HW | Literal["native"] | None = None
    augment: AugmentSpec = fresh(AugmentSpec)
    num_workers: Annotated[int, Strict(), Field(ge=0, le=32)] = 0
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

    arch: Annotated[str, Field(min_length=1, max_length=64)] = "unet"
    #: Encoder levels (each halves the resolution); the input must be divisible by 2**depth.
    depth: Annotated[int, Strict(), Field(ge=1, le=6)] = 4
    #: Channels of the first level (<= 256); doubles every level. `auto` (students only): the
    #: profiler picks the largest width whose latency fits `profiling.latency_budget_ms`.
    width: Annotated[int, Strict(), Field(ge=1, le=MAX_WIDTH)] | Literal["auto"] = 16
    norm: Literal["batch", "group"] = "batch"
    upsample: Literal["transpose", "bilinear"] = "bilinear"
    separable: Bool = False
    num_classes: Annotated[int, Strict(), Field(ge=1, le=255)] = 19
    #: A checkpoint to start from (a teacher given here skips teacher training). On the
    #: platform: an artifact key of one of the submitter's own experiments.
    checkpoint: PathStr | None = None

    @field_validator("arch")
    @classmethod
    def _registered(cls, v: str) -> str:
        from distillery.registry import MODELS

        return MODELS.check(v)

    def tap_names(self) -> list[str]:
        """The feature taps of this model (see `model_taps`)."""
        return model_taps(self.arch, self.depth)


def model_taps(arch: str, depth: int) -> list[str]:
    """Feature tap names of a registered model, computed without building it (no torch).

    UNet (`distillery.models.unet.UNet`): `encoder.0..depth-1`, `bottleneck`,
    `decoder.0..depth-1`, then `logits` (the output).
    """
    if arch != "unet":
        raise ValueError(f"no tap layout for model {short(arch)}")
    return [
        *(f"encoder.{i}" for i in range(depth)),
        "bottleneck",
        *(f"decoder.{j}" for j in range(depth)),
        "logits",
    ]


# -------------------------------------------------------------------------------------- losses


class _Term(_Strict):
    #: In [0, 1000].
    weight: Weight = 1.0


#: Per-class loss weights computed from the training set's label statistics (or none).
ClassWeighting = Literal["none", "median_frequency", "enet"]


class CrossEntropyTerm(_Term):
    """Pixel cross-entropy, ignore index 255; optional class weights and label smoothing."""

    kind: Literal["cross_entropy"] = "cross_entropy"
    class_weights: ClassWeighting = "none"
    label_smoothing: Annotated[float, Strict(), Field(ge=0, lt=1, allow_inf_nan=False)] = 0.0


class FocalTerm(_Term):
    kind: Literal["focal"] = "focal"
    gamma: Annotated[float, Strict(), Field(ge=0, le=10, allow_inf_nan=False)] = 2.0
    class_weights: ClassWeighting = "none"


class OhemTerm(_Term):
    kind: Literal["ohem"] = "ohem"
    class_weights: ClassWeighting = "none"
    #: Pixels whose probability of the true class is below `threshold` are hard.
    threshold: Annotated[float, Strict(), Field(gt=0, le=1, allow_inf_nan=False)] = 0.7
    #: ... but at least this fraction of valid pixels is always kept.
    min_kept_fraction: Annotated[float, Strict(), Field(gt=0, le=1, allow_inf_nan=False)] = 0.1


class ConfidencePenaltyTerm(_Term):
    """Entropy bonus for teachers: loss = -beta * mean pixel entropy (a softer, richer teacher)."""

    kind: Literal["confidence_penalty"] = "confidence_penalty"


class LogitKDTerm(_Term):
    kind: Literal["logit_kd"] = "logit_kd"
    #: In (0, 100].
    temperature: Temperature = 4.0


class ChannelWiseKDTerm(_Term):
    kind: Literal["channel_wise_kd"] = "channel_wise_kd"
    temperature: Temperature = 4.0
    #: `logits` or a feature tap; on a tap, a 1x1 adapter maps student to teacher channels.
    tap: Tap = "logits"


class DISTTerm(_Term):
    """DIST (Huang et al. 2022): Pearson-correlation relations between the class probabilities,
    ``T^2 (beta * inter-class + gamma * intra-class)``; see `distillery.losses.dist`."""

    kind: Literal["dist"] = "dist"
    temperature: Temperature = 1.0
    beta: Weight = 1.0
    gamma: Weight = 1.0


class FeatureMSETerm(_Term):
    kind: Literal["feature_mse"] = "feature_mse"
    student_tap: Tap
    teacher_tap: Tap


class AttentionTransferTerm(_Term):
    kind: Literal["attention_transfer"] = "attention_transfer"
    student_tap: Tap
    teacher_tap: Tap


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
    #: 1..10000.
    epochs: Annotated[int, Strict(), Field(ge=1, le=MAX_EPOCHS)] = 10
    #: 1..4096.
    batch_size: Annotated[int, Strict(), Field(ge=1, le=MAX_BATCH_SIZE)] = 8
    optimizer: Literal["adamw", "sgd"] = "adamw"
    #: In (0, 10].
    lr: Annotated[float, Strict(), Field(gt=0, le=10, allow_inf_nan=False)] = 2e-3
    weight_decay: Annotated[float, Strict(), Field(ge=0, le=1, allow_inf_nan=False)] = 1e-4
    momentum: Annotated[float, Strict(), Field(ge=0, lt=1, allow_inf_nan=False)] = 0.9
    schedule: Annotated[str, Field(max_length=64)] = "poly"
    poly_power: Annotated[float, Strict(), Field(gt=0, le=10, allow_inf_nan=False)] = 0.9
    warmup_steps: Annotated[int, Strict(), Field(ge=0, le=1_000_000)] = 0
    grad_accum_steps: Annotated[int, Strict(), Field(ge=1, le=1024)] = 1
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    #: Processes for `accelerate launch` (GPUs on a GPU node; gloo processes on a CPU); <= 64.
    num_processes: Annotated[int, Strict(), Field(ge=1, le=MAX_PROCESSES)] = 1
    #: Machines the stage trains on, `num_processes` processes each (<= 16). Above 1 the worker
    #: runs it as a Kubernetes indexed Job of that many pods (services/worker/multinode.py).
    num_nodes: Annotated[int, Strict(), Field(ge=1, le=16)] = 1
    #: Cap on optimizer steps per epoch (tiny smoke runs); null = the whole training set.
    max_steps_per_epoch: Annotated[int, Strict(), Field(ge=1, le=1_000_000)] | None = None
    grad_clip_norm: Annotated[float, Strict(), Field(gt=0, le=1e6, allow_inf_nan=False)] | None = (
        None
    )
    #: Iteration-based training (segmentation recipes: 40k/80k): exactly this many optimizer
    #: steps, over as many epochs as that takes (the last one ends early); `epochs` is ignored.
    max_steps: Annotated[int, Strict(), Field(ge=1, le=10_000_000)] | None = None
    #: Also checkpoint every this many optimizer steps, mid-epoch too (a resume continues at
    #: that step, data order included): a kill loses at most this many. null = epoch ends only.
    save_every_steps: Annotated[int, Strict(), Field(ge=1, le=10_000_000)] | None = None
    #: Validate every this many optimizer steps (mid-epoch too) and at the last step, instead
    #: of at every epoch end (null). Each validation is one entry of the stage's history.
    eval_every_steps: Annotated[int, Strict(), Field(ge=1, le=10_000_000)] | None = None
    #: Loss components are read from the device (a host-device sync), logged and reported every
    #: this many optimizer steps (and at the end of each epoch); other steps never wait on it.
    log_every_steps: Annotated[int, Strict(), Field(ge=1, le=1_000_000)] = 1
    #: Intra-op CPU threads of each training process (1..1024); null = OMP_NUM_THREADS if set,
    #: else the cores divided among the processes less one per loader worker. Recorded.
    num_threads: Annotated[int, Strict(), Field(ge=1, le=1024)] | None = None
    #: CUDA: TF32 for float32 matmuls and convolutions (Ampere and newer; ~10-bit mantissa,
    #: much faster). Recorded in the result; mixed precision is unaffected.
    tf32: Annotated[bool, Strict()] = True
    #: With num_processes > 1, BatchNorm statistics over the global batch of all processes
    #: (SyncBatchNorm on CUDA, an all-reduce on gloo) instead of each process's 1-2 crops.
    sync_batchnorm: Annotated[bool, Strict()] = True

    @field_validator("schedule")
    @classmethod
    def _registered(cls, v: str) -> str:
        from distillery.schedules import SCHEDULES

        return SCHEDULES.check(v)


class ModelStageSpec(_Strict):
    """A model and how it is trained on its own."""

    model: ModelSpec = fresh(ModelSpec)
    train: TrainSpec = fresh(TrainSpec)
    losses: list[LossTerm] = Field(
        default_factory=lambda: [CrossEntropyTerm()], min_length=1, max_length=16
    )

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
    every: Annotated[int, Strict(), Field(ge=1, le=1_000_000)] = 1
    unit: Literal["steps", "epochs"] = "epochs"


class TeacherCacheSpec(_Strict):
    """Offline distillation: the frozen teacher's logits computed once per training image (and
    its mirror image) and cut with each crop's geometric transform, instead of a teacher forward
    every step (see `distillery.training.teacher_cache`). Off by default: an approximation (the
    teacher sees the whole image at the base scale, without photometric jitter)."""

    enabled: Bool = False
    #: The cached map's downsampling (stored fp16): 1 keeps the teacher's full resolution.
    stride: Annotated[int, Strict(), Field(ge=1, le=8)] = 4


#: The tap name of a model's logits (the only teacher output a teacher cache holds).
LOGIT_ONLY_TAP = "logits"


class DistillationSpec(_Strict):
    mode: Literal["offline", "online"] = "offline"
    #: Weighted sum of supervised and distillation terms for the student.
    losses: list[LossTerm] = Field(
        default_factory=lambda: [CrossEntropyTerm(), LogitKDTerm()], min_length=1, max_length=16
    )
    #: Online mode: the teacher's own objective (supervised terms + a mutual logit_kd term).
    teacher_losses: list[LossTerm] = Field(
        default_factory=lambda: [CrossEntropyTerm(), LogitKDTerm(weight=0.5, temperature=1.0)],
        max_length=16,
    )
    #: Training settings; default: the student's.
    train: TrainSpec | None = None
    alternate: AlternateSpec | None = None
    teacher_cache: TeacherCacheSpec = fresh(TeacherCacheSpec)

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
        if self.teacher_cache.enabled:
            self._check_cacheable()
        return self

    def _check_cacheable(self) -> None:
        """A teacher cache holds a frozen teacher's logits only: no online mode, no term that
        reads teacher features."""
        if self.mode != "offline":
            raise ValueError(
                "teacher_cache.enabled: a teacher cache needs mode offline (a frozen teacher), "
                f"got mode {self.mode}"
            )
        for i, term in enumerate(self.losses):
            tap = getattr(term, "teacher_tap", None) or getattr(term, "tap", LOGIT_ONLY_TAP)
            if tap != LOGIT_ONLY_TAP:
                raise ValueError(
                    f"teacher_cache.enabled: losses.{i} ({term.kind}) reads the teacher's "
                    f"features at {short(tap)}; the teacher cache holds only its logits"
                )


# ----------------------------------------------------------------------------------- profiling


class ProfilingSpec(_Strict):
    #: (height, width) at which latency is measured (and at which the budget applies).
    input_size: HW = (64, 128)
    #: At most 16 batch sizes, each 1..4096.
    batch_sizes: list[Annotated[int, Strict(), Field(ge=1, le=MAX_BATCH_SIZE)]] = Field(
        default_factory=lambda: [1], min_length=1, max_length=16
    )
    device: Literal["cpu", "cuda", "auto"] = "auto"
    #: Precision of a variant that names none, and the precision at which the budget applies.
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    #: `runtime[+precision]`: runtime eager | channels_last | compile | onnx, precision fp32 |
    #: bf16 | fp16 (autocast). A bare precision (`bf16`) means `eager+bf16`.
    variants: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=lambda: ["eager"], min_length=1, max_length=16
    )
    #: Untimed calls before timing, 0..1000 (at least 1 with a `compile` variant: its first call
    #: compiles, and is reported apart as `latency_ms.first_call`).
    warmup: Annotated[int, Strict(), Field(ge=0, le=1000)] = 3
    min_repeats: Annotated[int, Strict(), Field(ge=1, le=10_000)] = 5
    max_repeats: Annotated[int, Strict(), Field(ge=1, le=10_000)] = 50
    #: Stop repeating once the (robust) coefficient of variation of the latency is below this.
    target_cv: Annotated[float, Strict(), Field(gt=0, le=1, allow_inf_nan=False)] = 0.05
    #: Stop repeating one measurement after this many seconds (once `min_repeats` are done).
    max_time_s: Annotated[float, Strict(), Field(gt=0, le=3600, allow_inf_nan=False)] | None = 30.0
    latency_budget_ms: (
        Annotated[float, Strict(), Field(gt=0, le=1e6, allow_inf_nan=False)] | None
    ) = None
    #: Batch size at which the budget applies.
    budget_batch_size: Annotated[int, Strict(), Field(ge=1, le=MAX_BATCH_SIZE)] = 1
    #: The latency statistic compared with the budget.
    budget_statistic: Literal["p50", "p90", "p99", "mean"] = "p50"
    #: Widths tried by `student.model.width: auto`, largest that fits wins.
    auto_widths: list[Annotated[int, Strict(), Field(ge=1, le=MAX_WIDTH)]] = Field(
        default_factory=lambda: [4, 8, 12, 16, 24, 32, 48, 64], min_length=1, max_length=32
    )

    @field_validator("variants")
    @classmethod
    def _known_variants(cls, v: list[str]) -> list[str]:
        from distillery.profiler.variants import parse_variant

        for name in v:
            parse_variant(name)  # raises ValueError naming the allowed runtimes and precisions
        if len(set(v)) != len(v):
            raise ValueError(f"variants repeat a name: {short(v)}")
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
    project: Annotated[str, Field(min_length=1, max_length=128)] = "distillery"
    entity: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    log_images: Bool = True
    #: Log feature maps at every tap for one fixed validation image.
    log_feature_maps: Bool = True


# --------------------------------------------------------------------------------------- sweep


class SweepConfiguration(_Strict):
    """A child: the base spec with these overrides (dotted path -> value)."""

    name: str = Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    overrides: dict[str, Any] = Field(default_factory=dict)


class SweepSpec(_Strict):
    """Children of one spec (see `distillery.sweeps`): the product of `grid`, plus the listed
    `configurations`, each trained once per seed of `seeds` (student seeds; the teacher keeps
    the spec's `seed`). Stages identical across children are planned once."""

    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1, max_length=32)
    #: Dotted paths into the base spec (list items by index) -> the values to try.
    grid: dict[
        Annotated[str, Field(max_length=200)],
        Annotated[list[Any], Field(min_length=1, max_length=64)],
    ] = Field(default_factory=dict, max_length=8)
    configurations: list[SweepConfiguration] = Field(default_factory=list, max_length=256)
    #: Also compare each child with a student-alone baseline given as much training time as
    #: its distillation took (more epochs at the same seed): gains at equal compute.
    compute_matched_baseline: bool = False

    @model_validator(mode="after")
    def _bounded(self) -> SweepSpec:
        """At most `MAX_SWEEP_CHILDREN` configurations (grid product + listed) before any child
        is built: a grid of a few long lists must not expand into millions of specs."""
        children = len(self.configurations)
        product = 1
        for values in self.grid.values():
            product *= len(values)
            if product > MAX_SWEEP_CHILDREN:
                break
        children += product if self.grid else 0
        if children > MAX_SWEEP_CHILDREN:
            raise ValueError(
                f"the sweep has more than {MAX_SWEEP_CHILDREN} configurations (grid product "
                "plus configurations)"
            )
        return self

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds repeat a value: {short(v)}")
        return v


# ---------------------------------------------------------------------------------- experiment

#: The stages a spec runs by default (`size` is planned by itself for a width `auto` student).
DEFAULT_STAGES = ("teacher", "student", "distill", "profile")


class ExperimentSpec(_Strict):
    name: str = Field(min_length=1, max_length=MAX_NAME, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    seed: Seed = 0
    data: DataSpec
    teacher: ModelStageSpec = ModelStageSpec(model=ModelSpec(width=32))
    student: ModelStageSpec = ModelStageSpec(model=ModelSpec(width=8))
    distillation: DistillationSpec = fresh(DistillationSpec)
    profiling: ProfilingSpec = fresh(ProfilingSpec)
    tracking: TrackingSpec = fresh(TrackingSpec)
    #: Stage kinds to run (`distillery.registry.STAGES`), run in the registry's order;
    #: `student` is the baseline (the student trained alone).
    stages: list[Annotated[str, Field(max_length=32)]] = Field(
        default_factory=lambda: list(DEFAULT_STAGES), max_length=16
    )

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
        self._check_taps()
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

    def _check_taps(self) -> None:
        """Every tap a distillation term reads exists on its model; the message lists the valid
        taps. (Online teacher terms see the teacher as `student` and the student as `teacher`.)"""
        models = {"student": self.student.model, "teacher": self.teacher.model}
        swap = {"student": "teacher", "teacher": "student"}
        for where, terms, role_of in (
            ("distillation.losses", self.distillation.losses, lambda r: r),
            ("distillation.teacher_losses", self.distillation.teacher_losses, swap.__getitem__),
        ):
            for i, term in enumerate(terms):
                reads = (
                    {"tap": ("student", "teacher")}
                    if term.kind == "channel_wise_kd"
                    else {"student_tap": ("student",), "teacher_tap": ("teacher",)}
                )
                for attr, roles in reads.items():
                    tap = getattr(term, attr, None)
                    if tap is None:
                        continue
                    for role in roles:
                        model = role_of(role)
                        valid = models[model].tap_names()
                        if tap not in valid:
                            raise ValueError(
                                f"{where}.{i}.{attr}: the {model} (depth "
                                f"{models[model].depth}) has no tap {short(tap)}; valid taps: "
                                + ", ".join(valid)
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


def field_path(loc: tuple[Any, ...] | list[Any], raw: Any) -> str:
    """The dotted path of an error in the spec as written: pydantic's union branch names
    (`constrained-int`, `literal['auto']`, a loss's `logit_kd`) are dropped by walking `raw`
    (the input) and keeping only the parts that are keys or indices in it."""
    if raw is None:  # no input to walk: drop what reads as a branch name
        return ".".join(str(p) for p in loc if not (isinstance(p, str) and ("[" in p or "-" in p)))
    parts: list[str] = []
    node = raw
    for i, part in enumerate(loc):
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            node = node[part]
        elif i == len(loc) - 1 and isinstance(node, dict) and isinstance(part, str):
            node = None  # a missing field: the last part is its name
        else:
            continue  # a union branch or a discriminator tag, not part of the spec
        parts.append(str(part))
    return ".".join(parts)


def readable_errors(errors: list[dict[str, Any]], raw: Any) -> dict[str, str]:
    """One message per field: the alternatives of a union become `A, or B`
    (`Input should be greater than 0, or 'auto'`)."""
    grouped: dict[str, list[str]] = {}
    for e in errors:
        msgs = grouped.setdefault(field_path(e["loc"], raw) or "(spec)", [])
        if e["msg"] not in msgs:
            msgs.append(e["msg"])
    return {
        field: ", or ".join([msgs[0], *(m.removeprefix("Input should be ") for m in msgs[1:])])
        for field, msgs in grouped.items()
    }


def format_validation_error(err: ValidationError, raw: Any = None) -> str:
    """`  field.path: message` lines, one per field (see `readable_errors`)."""
    errors = readable_errors(err.errors(), raw)
    return "\n".join(f"  {field}: {msg}" for field, msg in errors.items())


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
        raise SpecError(f"{path}: invalid spec\n{format_validation_error(e, raw)}") from None
