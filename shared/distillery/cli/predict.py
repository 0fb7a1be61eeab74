"""`distillery` commands: predict."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console


def predict_command(
    model: Annotated[Path, typer.Argument(help="An exported model (.pt).")],
    images: Annotated[
        Path, typer.Option("--images", help="Folder of images (*.png, *.jpg), recursively.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for the trainId PNGs.")],
    color: Annotated[
        bool, typer.Option("--color", help="Also write <stem>_overlay.jpg (Cityscapes colours).")
    ] = False,
    input_size: Annotated[
        str | None,
        typer.Option(
            "--input-size",
            help="HEIGHTxWIDTH the input is resized to cover, aspect ratio kept (default: "
            "native size). Predictions are always written at the native size.",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 4,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto.")] = "auto",
    workers: Annotated[int, typer.Option("--workers", min=0, help="Image loader workers.")] = 0,
) -> None:
    """Segment every image under --images with MODEL; write `<stem>.png` trainId maps (the
    format `distillery evaluate` reads) into --out."""
    from tqdm import tqdm

    from distillery.cli.profile import parse_input_size
    from distillery.models.checkpoint import CheckpointError
    from distillery.predict import PredictionError, find_images, predict_folder

    err = Console(stderr=True)
    size = parse_input_size(input_size) if input_size is not None else None
    try:
        total = len(find_images(images))
        with tqdm(total=total, unit="img", desc="predict", dynamic_ncols=True) as bar:
            result = predict_folder(
                model,
                images,
                out,
                input_size=size,
                color=color,
                batch_size=batch_size,
                device=device,
                num_workers=workers,
                on_image=lambda _stem: bar.update(),
            )
    except (PredictionError, CheckpointError, FileNotFoundError) as e:
        err.print(f"[red]error:[/red] {e}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    err.print(
        f"{result.num_images} predictions in {result.out_dir} ({result.device})", highlight=False
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `distillery` app."""
    app.command("predict")(predict_command)
