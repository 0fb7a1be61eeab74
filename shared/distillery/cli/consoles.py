"""The CLI's rich consoles. On a terminal rich fits tables to its width; when output goes to a
file or a CI log rich would assume 80 columns and squeeze a wide table into `va… ba… me…`, so
there it gets room for every column (`COLUMNS` still wins)."""

from __future__ import annotations

import os

from rich.console import Console

#: Width for output that is not a terminal (a CI log line is not wrapped by anyone).
PIPED_WIDTH = 240


def make_console(*, stderr: bool = False) -> Console:
    """A console for stdout (or stderr); wide when not a terminal."""
    console = Console(stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, width=PIPED_WIDTH)
    return console
