"""`distillery` commands: profile."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from distillery.cli.consoles import make_console

CHECKPOINT_SUFFIXES = {".pt", ".pth"}
SPEC_SUFFIXES = {".yaml", ".yml", ".json"}
WANDB_MODES = ("online", "offline", "disabled")


def parse_input_size(text: str) -> tuple[int, int]:
    """`1024x2048` (height x width) -> (1024, 2048)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: give HEIGHTxWIDTH, e.g. 1024x2048", param_hint="--input-size"
        ) from None
    if h < 1 or w < 1:
        raise typer.BadParameter(f"{text!r}: sizes must be positive", param_hint="--input-size")
    return h, w


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: give comma-separated integers, e.g. 1,4", param_hint="--batch-sizes"
        ) from None
    if not sizes or min(sizes) < 1:
        raise typer.BadParameter(f"{text!r}: batch sizes must be >= 1", param_hint="--batch-sizes")
    return sizes


def profile_command(
    target: Annotated[
        Path, typer.Argument(help="An exported model (.pt) or an experiment spec (.yaml/.json).")
    ],
    input_size: Annotated[
        str | None, typer.Option("--input-size", help="HEIGHTxWIDTH, e.g. 1024x2048.")
    ] = None,
    batch_sizes: Annotated[
        str | None, typer.Option("--batch-sizes", help="Comma-separated, e.g. 1,4.")
    ] = None,
    variants: Annotated[
        str | None,
        typer.Option(
            "--variants",
            help="Comma-separated runtime[+precision]: eager, channels_last, compile, onnx; "
            "fp32, bf16, fp16 (e.g. eager,bf16,channels_last+bf16,onnx).",
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu, cuda, cuda:N or auto.")
    ] = None,
    model: Annotated[
        str, typer.Option("--model", help="With a spec: profile the student or the teacher.")
    ] = "student",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the report as JSON here.")
    ] = None,
    markdown_out: Annotated[
        Path | None, typer.Option("--markdown", help="Write the report as Markdown here.")
    ] = None,
    warmup: Annotated[int | None, typer.Option(help="Warm-up calls per measurement.")] = None,
    min_repeats: Annotated[int | None, typer.Option(help="Fewest timed calls.")] = None,
    max_repeats: Annotated[int | None, typer.Option(help="Most timed calls.")] = None,
    target_cv: Annotated[
        float | None, typer.Option(help="Stop once the robust cv is below this.")
    ] = None,
    max_time: Annotated[
        float | None, typer.Option("--max-time", help="Seconds per measurement (cap).")
    ] = None,
    refresh_peak: Annotated[
        bool, typer.Option("--refresh-peak", help="Re-measure the cached matmul peak.")
    ] = False,
    wandb_mode: Annotated[
        str,
        typer.Option(
            "--wandb-mode",
            help="Log the profile as a W&B run: online (needs a login; else offline), offline "
            "(wandb sync it later) or disabled.",
        ),
    ] = "disabled",
    wandb_project: Annotated[
        str | None,
        typer.Option("--wandb-project", help="W&B project (default: the spec's, or distillery)."),
    ] = None,
    wandb_group: Annotated[
        str | None,
        typer.Option("--wandb-group", help="W&B group (default: the spec's or the file's name)."),
    ] = None,
    wandb_dir: Annotated[
        Path, typer.Option("--wandb-dir", help="Where the run folder goes (<dir>/wandb/...).")
    ] = Path("."),
) -> None:
    """Profile a model: latency (mean/std/p50/p90/p99), images/s, FLOPs, memory and fraction of
    the device's matmul peak, per variant and batch size; a spec's latency budget is checked,
    and a student of width `auto` is sized first."""
    from distillery.models.checkpoint import CheckpointError
    from distillery.profiler import (
        BudgetNotMetError,
        DeviceError,
        format_report,
        format_width_search,
        profile_checkpoint,
        profile_experiment,
        report_markdown,
        resolve_device,
    )
    from distillery.profiler.format import budget_line
    from distillery.profiler.peak import matmul_peak
    from distillery.spec import ExperimentSpec, ProfilingSpec, SpecError, TrackingSpec, load_spec
    from distillery.stages.profile_tracking import log_profile_run, log_size_run

    out, err = make_console(), make_console(stderr=True)
    overrides = {
        k: v
        for k, v in dict(
            warmup=warmup,
            min_repeats=min_repeats,
            max_repeats=max_repeats,
            target_cv=target_cv,
            max_time_s=max_time,
        ).items()
        if v is not None
    }
    call_overrides: dict[str, object] = {}
    if input_size is not None:
        call_overrides["input_size"] = parse_input_size(input_size)
    if batch_sizes is not None:
        call_overrides["batch_sizes"] = parse_batch_sizes(batch_sizes)
    if variants is not None:
        call_overrides["variants"] = variants
    if model not in ("student", "teacher"):
        raise typer.BadParameter(f"{model!r}: use student or teacher", param_hint="--model")
    if wandb_mode not in WANDB_MODES:
        raise typer.BadParameter(
            f"{wandb_mode!r}: use {', '.join(WANDB_MODES)}", param_hint="--wandb-mode"
        )
    if wandb_mode != "disabled":
        os.environ.setdefault("WANDB_SILENT", "true")  # the run's folder is printed below
    spec: ExperimentSpec | None = None
    prof = ProfilingSpec()

    def tracking() -> TrackingSpec:
        base = spec.tracking if spec is not None else TrackingSpec()
        update: dict[str, object] = {"mode": wandb_mode}
        if wandb_project is not None:
            update["project"] = wandb_project
        return base.model_copy(update=update)

    group = wandb_group or target.stem

    suffix = target.suffix.lower()
    try:
        if refresh_peak:
            dev = resolve_device(device)
            for p in ("fp32", "bf16") if dev.type == "cpu" else ("fp32", "bf16", "fp16"):
                matmul_peak(dev, p, refresh=True)
        if suffix in SPEC_SUFFIXES:
            spec = load_spec(target)
            prof = ProfilingSpec.model_validate({**spec.profiling.model_dump(), **overrides})
            spec = spec.model_copy(update={"profiling": prof, "tracking": tracking()})
            group = wandb_group or spec.name
            report = profile_experiment(spec, which=model, device=device, **call_overrides)  # type: ignore[arg-type]
        elif suffix in CHECKPOINT_SUFFIXES:
            prof = ProfilingSpec.model_validate(overrides)
            report = profile_checkpoint(target, prof, device=device, **call_overrides)
        else:
            ckpt, specs = ", ".join(sorted(CHECKPOINT_SUFFIXES)), ", ".join(sorted(SPEC_SUFFIXES))
            raise ValueError(
                f"{target}: TARGET must be an exported model ({ckpt}) or a spec ({specs})"
            )
    except BudgetNotMetError as e:
        assert spec is not None  # only a spec's `auto` width is searched
        run = log_size_run(e.search, spec, wandb_dir, group=group, failed=True)
        if run is not None:
            err.print(f"wandb run: {run['url'] or run['dir']}", highlight=False)
        err.print(format_width_search(e.search))
        err.print(f"[red]error:[/red] {e}", markup=True, highlight=False)
        raise typer.Exit(2) from None
    except (SpecError, CheckpointError, DeviceError, FileNotFoundError, ValueError) as e:
        msg = str(e)
        if hasattr(e, "errors") and callable(e.errors):  # pydantic ValidationError
            from distillery.spec import format_validation_error

            msg = "invalid profiling settings\n" + format_validation_error(e)  # type: ignore[arg-type]
        err.print(f"[red]error:[/red] {msg}", markup=True, highlight=False)
        raise typer.Exit(2) from None

    if report.width_search is not None:
        out.print(format_width_search(report.width_search))
    out.print(format_report(report))
    if report.budget is not None:
        style = {"pass": "green", "fail": "red"}.get(report.budget.verdict, "yellow")
        out.print(f"[{style}]{budget_line(report.budget)}[/{style}]", highlight=False)
    run = log_profile_run(
        {model if spec is not None else "model": report},
        prof,
        tracking(),
        wandb_dir,
        name=f"{group}-profile",
        group=group,
        spec=spec,
    )
    if run is not None:
        out.print(f"wandb run: {run['url'] or run['dir']}", highlight=False)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(report.model_dump_json(indent=2))
        out.print(f"wrote {json_out}")
    if markdown_out is not None:
        markdown_out.parent.mkdir(parents=True, exist_ok=True)
        markdown_out.write_text(report_markdown(report))
        out.print(f"wrote {markdown_out}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `distillery` app."""
    app.command("profile")(profile_command)
