"""`distillery run SPEC.yaml`: the whole pipeline on this machine, no servers."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from distillery.cli.consoles import make_console
from distillery.cli.tables import results_table
from distillery.spec import ExperimentSpec, SpecError, load_spec
from distillery.stages.plan import planned_kinds

console = make_console()


def run(
    spec_path: Annotated[Path, typer.Argument(help="Experiment spec (YAML or JSON).")],
    run_dir: Annotated[
        Path | None, typer.Option(help="Run folder; default runs/<spec name>.")
    ] = None,
    fresh: Annotated[bool, typer.Option(help="Start over instead of resuming.")] = False,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            help="CPU threads per training process (train.num_threads of every stage); "
            "default: the cores divided among processes and loader workers.",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the stages (a sweep: its children and shared stages); run nothing.",
        ),
    ] = False,
) -> None:
    """Make the data if absent, train teacher, student baseline and distilled student, profile
    the student, and print the comparison table. A spec with a `sweep:` section runs all its
    children, training shared stages once."""
    from distillery.pipeline import ExperimentFailed, run_local

    try:
        spec = load_spec(spec_path)
    except SpecError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    if threads is not None:
        spec = spec.with_num_threads(threads)
    run_dir = run_dir or Path("runs") / spec.name
    if dry_run:
        print_plan(spec)
        return
    # The progress bars are the interface; wandb's own chatter would break them up.
    os.environ.setdefault("WANDB_SILENT", "true")
    if spec.sweep is not None:
        run_sweep_here(spec, run_dir, fresh)
        return
    console.print(
        f"[bold]{spec.name}[/bold]: stages "
        f"{', '.join(k.name for k in planned_kinds(spec))} → {run_dir}"
    )

    bars = Progress(
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
    )
    tasks: dict[str, Any] = {}
    # Piped to a log (`| tee run.log`, CI) rich shows the bars only when they end: print a line
    # per stage change and per epoch instead, as it goes.
    piped = not console.is_terminal

    def on_stage(name: str, status: str) -> None:
        if piped:
            console.print(f"{name}: {status}", highlight=False)
            return
        if name not in tasks:
            tasks[name] = bars.add_task(name, total=None, info=status)
        if status == "done":
            total = bars.tasks[tasks[name]].total or 1
            bars.update(tasks[name], total=total, completed=total, info="done")

    def on_progress(name: str, p: Any) -> None:
        if piped:
            print_epoch_end(name, p)
            return
        total = p.epochs * p.steps
        done = (p.epoch - 1) * p.steps + p.step
        info = f"epoch {p.epoch}/{p.epochs}"
        if "miou" in p.metrics:
            info += f"  mIoU {100 * p.metrics['miou']:.1f}"
        elif "loss" in p.metrics:
            info += f"  loss {p.metrics['loss']:.3f}"
        bars.update(tasks[name], total=total, completed=done, info=info)

    try:
        with contextlib.nullcontext() if piped else bars:
            results = run_local(
                spec, run_dir, fresh=fresh, on_progress=on_progress, on_stage=on_stage
            )
    except ExperimentFailed as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(1) from None
    console.print(results_table(results))
    console.print(f"Run folder: {run_dir} (results.json, results.md, checkpoints, wandb)")


def print_plan(spec: ExperimentSpec) -> None:
    """The dry run: a sweep's expansion and sharing, or one experiment's stages."""
    from distillery.sweeps import describe_plan, plan_sweep

    if spec.sweep is None:
        stages = ", ".join(k.name for k in planned_kinds(spec))
        console.print(f"{spec.name}: one experiment, stages {stages}")
        return
    console.print(describe_plan(plan_sweep(spec)), highlight=False)


def print_epoch_end(name: str, p: Any) -> None:
    """One line at the end of each epoch of a stage (its validation mIoU and loss): progress
    that reads the same in a log file as on a terminal."""
    if not p.epoch_end:
        return
    line = f"{name}: epoch {p.epoch}/{p.epochs}"
    if "miou" in p.metrics:
        line += f"  mIoU {100 * p.metrics['miou']:.1f}"
    if "loss" in p.metrics:
        line += f"  loss {p.metrics['loss']:.3f}"
    console.print(line, highlight=False)


def run_sweep_here(spec: ExperimentSpec, run_dir: Path, fresh: bool) -> None:
    """Run every child of a sweep on this machine and print the comparison table; each part's
    start (`on_event`) and each epoch's end (`print_epoch_end`) as a line as it goes."""
    from distillery.sweep_local import run_sweep
    from distillery.sweeps import describe_plan, plan_sweep

    console.print(describe_plan(plan_sweep(spec)), highlight=False)
    results = run_sweep(
        spec,
        run_dir,
        fresh=fresh,
        on_event=lambda msg: console.print(msg, highlight=False),
        on_progress=print_epoch_end,
    )
    console.print((run_dir / "results.md").read_text(), highlight=False)
    console.print(f"Run folder: {run_dir} (results.json, results.md; `distillery report` plots)")
    if results["status"] == "failed":
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(run)
