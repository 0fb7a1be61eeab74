"""`distillery datasets ...`: one command group for data sets. Here the local ones (statistics,
validation, the synthetic generator); `distillery.cli.client` adds the platform's (upload,
register, list). `distillery dataset` is kept as a hidden alias."""

from __future__ import annotations

import json
import re
import time
from enum import StrEnum
from pathlib import Path

import typer
from rich.table import Table

from distillery.cli.consoles import make_console

datasets_app = typer.Typer(
    name="datasets",
    help="Data sets (Cityscapes / BDD100K layouts): generate, stats and validate local folders; "
    "upload, register and list them on the platform.",
    no_args_is_help=True,
)


class FormatName(StrEnum):
    cityscapes = "cityscapes"
    bdd100k = "bdd100k"


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `distillery` app."""
    app.add_typer(datasets_app, name="datasets")
    app.add_typer(datasets_app, name="dataset", hidden=True)  # the name before 0.2


def _fail(message: str) -> None:
    make_console(stderr=True).print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code=1)


def parse_size(text: str) -> tuple[int, int]:
    """'64x128' -> (64, 128): height x width."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise typer.BadParameter(f"{text!r}: expected HEIGHTxWIDTH, e.g. 64x128")
    return int(m.group(1)), int(m.group(2))


@datasets_app.command("stats")
def stats_cmd(
    path: Path = typer.Argument(..., help="Data set root in its native layout."),
    fmt: FormatName = typer.Option(..., "--format", "-f", help="Layout of PATH."),
    split: str = typer.Option("train", "--split", "-s"),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON only."),
    plot: Path | None = typer.Option(None, "--plot", help="Write a PNG plot here."),
    max_images: int | None = typer.Option(None, "--max-images", min=1),
    objects: bool = typer.Option(True, "--objects/--no-objects", help="Object-size histogram."),
) -> None:
    """Per-class pixel frequency, image presence, object sizes and class weights of a split."""
    from distillery.data.errors import DatasetError
    from distillery.data.stats import class_weights, compute_stats, plot_stats

    try:
        stats = compute_stats(
            path,
            fmt.value,
            split,
            max_images=max_images,
            object_sizes=objects,
            progress=not as_json,
        )
    except DatasetError as e:
        _fail(str(e))
        return
    if plot is not None:
        plot_stats(stats, plot)
    if as_json:
        typer.echo(stats.model_dump_json(indent=2))
        return
    mf = class_weights(stats, "median_frequency").tolist()
    enet = class_weights(stats, "enet").tolist()
    table = Table(
        title=f"{fmt.value}/{split}: {stats.num_images} images, "
        f"{stats.num_labelled_pixels / max(stats.num_pixels, 1):.1%} of pixels labelled"
    )
    for col in ("class", "pixels %", "presence %", "objects", "median-freq w", "ENet w"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for i, name in enumerate(stats.class_names):
        table.add_row(
            name,
            f"{100 * stats.pixel_frequency[i]:.2f}",
            f"{100 * stats.image_presence[i]:.1f}",
            str(stats.num_objects[i]) if objects else "-",
            f"{mf[i]:.3f}",
            f"{enet[i]:.2f}",
        )
    console = make_console()
    console.print(table)
    if plot is not None:
        console.print(f"plot written to {plot}")


@datasets_app.command("validate")
def validate_cmd(
    path: Path = typer.Argument(..., help="Data set root in its native layout."),
    fmt: FormatName = typer.Option(..., "--format", "-f"),
    split: str = typer.Option("train", "--split", "-s"),
) -> None:
    """Read every image and mask of a split; stop at the first problem, naming the file."""
    from distillery.data.errors import DatasetError
    from distillery.data.validate import validate_dataset

    try:
        report = validate_dataset(path, fmt.value, split)
    except DatasetError as e:
        _fail(str(e))
        return
    typer.echo(json.dumps(report, indent=2))


@datasets_app.command("generate")
def generate_cmd(
    path: Path = typer.Argument(..., help="Folder to write the data set into."),
    fmt: FormatName = typer.Option(..., "--format", "-f"),
    num_train: int = typer.Option(64, "--num-train", min=1),
    num_val: int = typer.Option(16, "--num-val", min=1),
    size: str = typer.Option("64x128", "--size", help="HEIGHTxWIDTH of the images."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Write the synthetic driving-scene data set in the native layout of --format."""
    from distillery.data.errors import DatasetError
    from distillery.data.synthetic import generate_synthetic

    hw = parse_size(size)
    t0 = time.perf_counter()
    try:
        generate_synthetic(path, fmt.value, num_train, num_val, hw, seed)
    except (DatasetError, ValueError) as e:
        _fail(str(e))
        return
    dt = time.perf_counter() - t0
    typer.echo(
        f"wrote {num_train} train + {num_val} val {fmt.value} images of {hw[0]}x{hw[1]} "
        f"to {path} in {dt:.1f}s"
    )
