"""Profile a teacher-sized and a student-sized UNet at 512x1024 and 1024x2048 across variants.

    python benchmarks/profile_models.py [--quick] [--full] [--device cpu|cuda] [--json out.json]
        [--sizes 1024x2048] [--batch-sizes 1,4] [--summary-only]

Widths come from examples/quickstart.yaml when it exists (else teacher 32, student 8; depth 4).
The default plan keeps a 2-core CPU run to a few minutes: the teacher and the large size run at
batch 1 with few repeats; torch.compile (a minute of C++ compilation per batch size on such a
CPU) only with `--compile`. `--quick` is the student alone on eager/channels_last/onnx;
`--full` runs every variant, compile included, at batch 1 and 4 on both models and sizes
(long on a CPU). On a GPU every variant (fp16 and compile included) runs at batch 1 and 4.
`--sizes` / `--batch-sizes` narrow the plan; `--summary-only` prints the one summary table
(benchmarks/gpu_check.sh uses it). The summary's "1st call ms" is the first warm-up call: for
compile rows, the compilation at that batch size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from rich.console import Console
from rich.table import Table

from distillery.models import build_model
from distillery.profiler import (
    ProfileReport,
    format_report,
    matmul_peak,
    profile_model,
    resolve_device,
)
from distillery.spec import ModelSpec, ProfilingSpec

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(512, 1024), (1024, 2048)]


@dataclass
class Job:
    model: str
    size: tuple[int, int]
    batch_sizes: list[int]
    variants: list[str]
    spec: ProfilingSpec


def model_specs() -> dict[str, ModelSpec]:
    """Teacher and student ModelSpecs: from examples/quickstart.yaml if present."""
    teacher, student = ModelSpec(width=32, depth=4), ModelSpec(width=8, depth=4)
    path = ROOT / "examples" / "quickstart.yaml"
    if path.is_file():
        raw = yaml.safe_load(path.read_text())
        teacher = ModelSpec.model_validate(raw.get("teacher", {}).get("model", {}))
        student_raw = raw.get("student", {}).get("model", {})
        if student_raw.get("width") == "auto":
            student_raw = {**student_raw, "width": 8}
        student = ModelSpec.model_validate(student_raw)
    return {"teacher": teacher, "student": student}


def plan(mode: str, device: str, compile_: bool) -> list[Job]:
    few = ProfilingSpec(warmup=1, min_repeats=3, max_repeats=5, target_cv=0.05, max_time_s=5)
    some = ProfilingSpec(warmup=2, min_repeats=5, max_repeats=20, target_cv=0.05, max_time_s=5)
    if device == "cuda":
        everything = [
            "eager",
            "bf16",
            "fp16",
            "channels_last",
            "channels_last+fp16",
            "compile",
            "onnx",
        ]
        many = some.model_copy(update={"max_repeats": 100})
        return [Job(m, s, [1, 4], everything, many) for m in ("student", "teacher") for s in SIZES]
    extra = ["compile"] if compile_ else []
    if mode == "quick":
        v = ["eager", "channels_last", "onnx", *extra]
        return [Job("student", SIZES[0], [1], v, few), Job("student", SIZES[1], [1], v, few)]
    if mode == "full":
        v = ["eager", "bf16", "channels_last", "channels_last+bf16", "compile", "onnx"]
        return [Job(m, s, [1, 4], v, few) for m in ("student", "teacher") for s in SIZES]
    return [
        Job(
            "student",
            SIZES[0],
            [1, 4],
            ["eager", "bf16", "channels_last", "channels_last+bf16", "onnx", *extra],
            some,
        ),
        Job("student", SIZES[1], [1], ["eager", "bf16", "channels_last", "onnx"], few),
        Job("teacher", SIZES[0], [1], ["eager", "bf16", "channels_last", "onnx"], few),
        Job("teacher", SIZES[1], [1], ["eager", "channels_last", "onnx"], few),
    ]


def summary(results: list[tuple[str, ProfileReport]]) -> Table:
    table = Table(title="Summary: median latency per batch (★ fastest per model, size and batch)")
    for h in [
        "model",
        "input",
        "variant",
        "batch",
        "p50 ms",
        "1st call ms",
        "img/s",
        "GFLOP/s",
        "% peak",
        "peak MB",
        "stable",
    ]:
        table.add_column(h, justify="left" if h in ("model", "variant", "stable") else "right")
    for name, r in results:
        for row in r.rows:
            size = f"{r.input_size[0]}x{r.input_size[1]}"
            label = f"{name} (w{r.model.width})"
            if row.status != "ok":
                table.add_row(
                    label,
                    size,
                    row.variant,
                    str(row.batch_size),
                    row.status,
                    "",
                    "",
                    "",
                    "",
                    "",
                    (row.note or "")[:60],
                    style="dim",
                )
                continue
            table.add_row(
                label,
                size,
                row.variant + (" ★" if row.fastest else ""),
                str(row.batch_size),
                f"{row.latency_ms.p50:.1f}",
                "—" if row.latency_ms.first_call is None else f"{row.latency_ms.first_call:.0f}",
                f"{row.images_per_s:.2f}",
                f"{row.gflops_per_s:.0f}",
                f"{100 * row.fraction_of_peak:.0f}",
                "—" if row.peak_memory_mb is None else f"{row.peak_memory_mb:.0f}",
                "yes" if row.latency_ms.stable else "NO",
                style="bold green" if row.fastest else None,
            )
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="student only, three variants")
    mode.add_argument("--full", action="store_true", help="every variant, batch 1 and 4")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="add torch.compile to the student at 512x1024 (CPU: about a minute per batch size)",
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="write the reports here")
    parser.add_argument("--refresh-peak", action="store_true", help="re-measure the matmul peak")
    parser.add_argument("--sizes", help="only these input sizes, e.g. 1024x2048,512x1024")
    parser.add_argument("--batch-sizes", help="these batch sizes instead, e.g. 1,4")
    parser.add_argument("--summary-only", action="store_true", help="print only the summary")
    args = parser.parse_args(argv)

    console = Console(width=max(Console().width, 160))
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    models = model_specs()
    mode = "quick" if args.quick else "full" if args.full else "default"
    jobs = plan(mode, dev.type, args.compile)
    if args.sizes:
        wanted = {tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")}
        jobs = [j for j in jobs if j.size in wanted]
    if args.batch_sizes:
        batches = [int(b) for b in args.batch_sizes.split(",")]
        jobs = [Job(j.model, j.size, batches, j.variants, j.spec) for j in jobs]
    began = time.monotonic()
    for precision in ("fp32", "bf16"):
        p = matmul_peak(dev, precision, refresh=args.refresh_peak)
        console.print(
            f"matmul peak {precision}: {p.gflops_per_s:.0f} GFLOP/s ({p.library}, n={p.size}, "
            f"{'cached ' if p.cached else ''}{p.measured_at}) — {p.key}"
        )
    results: list[tuple[str, ProfileReport]] = []
    for job in jobs:
        t0 = time.monotonic()
        model = build_model(models[job.model])
        report = profile_model(
            model,
            job.spec,
            device=str(dev),
            input_size=job.size,
            batch_sizes=job.batch_sizes,
            variants=job.variants,
            source=f"benchmark:{job.model}",
        )
        results.append((job.model, report))
        if not args.summary_only:
            console.print(format_report(report))
        console.print(
            f"[dim]{job.model} at {job.size[0]}x{job.size[1]}: {time.monotonic() - t0:.0f} s[/dim]"
        )
    console.print(summary(results))
    console.print(
        f"total {time.monotonic() - began:.0f} s on {results[0][1].device.name} "
        f"({dev}, {torch.get_num_threads()} threads, torch {torch.__version__})"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                [{"model": name, "report": r.model_dump(mode="json")} for name, r in results],
                indent=2,
            )
        )
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
