"""The `distillery` command: each module in `COMMAND_MODULES` adds its commands (`register`)."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="distillery",
    help="Train segmentation teachers for driving scenes and distil them into fast students.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

COMMAND_MODULES = ["run", "report", "dataset", "evaluate", "predict", "profile", "client", "admin"]

for _name in COMMAND_MODULES:
    importlib.import_module(f"distillery.cli.{_name}").register(app)
