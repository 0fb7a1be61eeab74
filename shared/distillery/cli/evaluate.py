"""`distillery` commands: evaluate."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path

import typer
from rich.table import Table

from distillery.cli.consoles import make_console


class _Dataset(StrEnum):
    cityscapes = "cityscapes"
    bdd100k = "bdd100k"


def evaluate(
    pred: Path = typer.Option(
        ..., "--pred", help="Folder of prediction PNGs (trainIds), searched recursively."
    ),
    gt: Path = typer.Option(..., "--gt", help="Dataset root in its native layout."),
    dataset: _Dataset = typer.Option(..., "--dataset", help="Layout of the ground truth."),
    split: str = typer.Option("val", "--split", help="Split whose ground truth is scored."),
    as_json: bool = typer.Option(False, "--json", help="Print the scores as JSON."),
) -> None:
    """Score prediction PNGs made by any model: per-class IoU, mIoU and pixel accuracy.

    Predictions are single-channel trainId PNGs; 255 = no prediction (scored as a miss).

    `<stem>.png` or `<stem>_*.png` anywhere under --pred is the prediction for image `<stem>`.

    Every ground-truth image of the split needs one.
    """
    from distillery.evaluate import EvaluationError, evaluate_predictions

    err = make_console(stderr=True)
    try:
        result = evaluate_predictions(pred, gt, dataset.value, split)
    except EvaluationError as e:
        err.print(f"[red]error:[/red] {e}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    if result.unmatched:
        err.print(
            f"note: {len(result.unmatched)} PNG(s) under {pred} match no ground-truth image "
            f"and were ignored (e.g. {result.unmatched[0]})",
            highlight=False,
            soft_wrap=True,
        )
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
        return
    m = result.metrics
    table = Table(title=f"{dataset.value} {split}: {result.num_images} images")
    table.add_column("class")
    table.add_column("IoU %", justify="right")
    for name, value in zip(m.class_names, m.iou, strict=True):
        table.add_row(name, "—" if value is None else f"{100 * value:.2f}")
    table.add_section()
    table.add_row("mIoU", f"{100 * m.miou:.2f}", style="bold")
    table.add_row("pixel accuracy", f"{100 * m.pixel_accuracy:.2f}")
    make_console().print(table)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `distillery` app."""
    app.command("evaluate")(evaluate)
