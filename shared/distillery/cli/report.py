"""`distillery report ID|RUN_DIR`: Markdown + PNG plots of a run (see research.report)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from distillery.cli.client import DEFAULT_URL, TokenOpt, UrlOpt, _call, _gateway

console = Console()


def report(
    target: Annotated[
        str, typer.Argument(metavar="ID|RUN_DIR", help="A run folder, or an experiment's id.")
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="Output folder; default RUN_DIR/report, or reports/<ID>."),
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Write report.md with the comparison table and its plots. An experiment id fetches its
    results from the gateway."""
    from distillery.research.report import write_report

    run_dir = Path(target)
    if not run_dir.is_dir():  # an experiment on the platform
        exp = _call(_gateway(url, token).get, f"/experiments/{target}")
        if not exp.get("results"):
            console.print(f"[red]experiment {target} has no results yet ({exp['status']})[/red]")
            raise typer.Exit(1)
        run_dir = out or Path("reports") / target
        run_dir.mkdir(parents=True, exist_ok=True)
        results = {"experiment_id": target, **exp["results"]}
        (run_dir / "results.json").write_text(json.dumps(results, indent=2))
        out = run_dir
    try:
        path = write_report(run_dir, out)
    except FileNotFoundError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    pngs = sorted(p.name for p in path.parent.glob("*.png"))
    console.print(f"report: {path} ({', '.join(pngs) or 'no plots'})", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(report)
