"""Profile results: pydantic models, JSON-serialisable (stored in Postgres and as profile.json)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, computed_field

from distillery.profiler.device import DeviceInfo
from distillery.profiler.timing import LatencyStats

FLOP_CONVENTION = (
    "FLOPs as counted by torch.utils.flop_counter: 1 multiply-add = 2 FLOPs, convolutions and "
    "matmuls only (norms, activations, pooling and resampling are not counted)"
)

RowStatus = Literal["ok", "unsupported", "unavailable", "failed"]


class ModelInfo(BaseModel):
    #: e.g. `unet` or the class name of a plain nn.Module.
    arch: str
    #: `spec:student`, `spec:teacher`, a checkpoint path, or `module`.
    source: str
    width: int | None = None
    depth: int | None = None
    separable: bool | None = None
    params: int
    #: fp32 weights (parameters + buffers) in MB.
    weights_mb: float
    #: FLOPs of one image at `input_size` (see `flop_convention`).
    flops_per_image: int
    input_size: tuple[int, int]
    flop_convention: str = FLOP_CONVENTION


class ProfileRow(BaseModel):
    """One (variant, batch size) measurement. Every figure is per batch at `input_size`,
    `precision` and `batch_size` on the report's device."""

    variant: str
    runtime: str
    precision: str
    batch_size: int
    input_size: tuple[int, int]
    status: RowStatus
    #: Why a row is not `ok`, or a remark about an `ok` one.
    note: str | None = None
    latency_ms: LatencyStats | None = None
    images_per_s: float | None = None
    #: FLOPs of the batch / median latency.
    gflops_per_s: float | None = None
    #: gflops_per_s / the device's measured matmul peak at this precision.
    fraction_of_peak: float | None = None
    peak_memory_mb: float | None = None
    memory_method: str | None = None
    #: Fastest `ok` row (lowest median) at this batch size.
    fastest: bool = False

    @computed_field
    @property
    def stable(self) -> bool | None:
        return self.latency_ms.stable if self.latency_ms else None

    @computed_field
    @property
    def cv(self) -> float | None:
        return self.latency_ms.cv if self.latency_ms else None


class PeakInfo(BaseModel):
    precision: str
    gflops_per_s: float
    #: Square matmul size, library and when it was measured (cached per device, torch, threads).
    size: int
    library: str
    measured_at: str


class FastestEntry(BaseModel):
    batch_size: int
    variant: str
    p50_ms: float


class BudgetVerdict(BaseModel):
    """Pass/fail of the spec's latency budget. margin = budget - measured (positive: to spare)."""

    budget_ms: float
    input_size: tuple[int, int]
    batch_size: int
    precision: str
    statistic: str
    #: `pass`, `fail`, or `not_measured` (no `ok` row at the budget's batch size/precision/size).
    verdict: Literal["pass", "fail", "not_measured"]
    variant: str | None = None
    measured_ms: float | None = None
    margin_ms: float | None = None
    #: margin as a percentage of the budget.
    margin_pct: float | None = None
    stable: bool | None = None
    note: str | None = None

    @computed_field
    @property
    def passed(self) -> bool:
        return self.verdict == "pass"


class WidthCandidate(BaseModel):
    width: int
    depth: int
    params: int
    flops_per_image: int
    #: `measured`, or `skipped` (a narrower width already missed the budget).
    status: Literal["measured", "skipped", "failed"]
    latency_ms: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    cv: float | None = None
    stable: bool | None = None
    fits: bool | None = None
    margin_ms: float | None = None
    note: str | None = None


class WidthSearch(BaseModel):
    """`student.model.width: auto`: the widths tried, their latency, and the one chosen."""

    budget_ms: float
    statistic: str
    input_size: tuple[int, int]
    batch_size: int
    precision: str
    variant: str
    device: DeviceInfo
    candidates: list[WidthCandidate]
    chosen_width: int | None
    chosen_depth: int
    note: str | None = None

    @computed_field
    @property
    def width(self) -> int | None:
        """The chosen width (what the `size` stage resolves `student.model.width: auto` to)."""
        return self.chosen_width


class ProfileReport(BaseModel):
    device: DeviceInfo
    model: ModelInfo
    input_size: tuple[int, int]
    batch_sizes: list[int]
    variants: list[str]
    #: Matmul peaks used for fraction_of_peak, per precision.
    peaks: list[PeakInfo]
    rows: list[ProfileRow]
    fastest: list[FastestEntry]
    budget: BudgetVerdict | None = None
    width_search: WidthSearch | None = None
    #: The measurement settings (warmup, repeats, target cv, time cap).
    settings: dict[str, float | int | None]
    created_at: str
    #: System load average (1, 5, 15 min) when the profile started and ended: a load above the
    #: CPU count means other work shared the machine and the timings are inflated.
    load_average: list[list[float]] | None = None

    @computed_field
    @property
    def busy(self) -> bool:
        """Was the machine busier than its CPUs while this profile ran?"""
        if not self.load_average:
            return False
        return max(la[0] for la in self.load_average) > self.device.cpu_count

    @computed_field
    @property
    def params(self) -> int:
        """= model.params (at the top level for the results table)."""
        return self.model.params

    @computed_field
    @property
    def flops_per_image(self) -> int:
        """= model.flops_per_image, at `input_size`."""
        return self.model.flops_per_image

    def row(self, variant: str, batch_size: int) -> ProfileRow:
        for r in self.rows:
            if r.variant == variant and r.batch_size == batch_size:
                return r
        raise KeyError(f"no row for variant {variant!r} at batch size {batch_size}")
