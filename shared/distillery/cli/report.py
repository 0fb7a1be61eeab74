"""`distillery report RUN_DIR`: Markdown + PNG plots of a run folder (see research.report)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()


def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder of `distillery run`.")],
    out: Annotated[Path | None, typer.Option(help="Output folder; default RUN_DIR/report.")] = None,
) -> None:
    """Write report.md with the comparison table and its plots."""
    from distillery.research.report import write_report

    try:
        path = write_report(run_dir, out)
    except FileNotFoundError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    pngs = sorted(p.name for p in path.parent.glob("*.png"))
    console.print(f"report: {path} ({', '.join(pngs) or 'no plots'})", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(report)
