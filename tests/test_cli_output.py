"""The CLI's output when it is not a terminal (a CI log, `| tee`): wide tables stay readable."""

from __future__ import annotations

import os
import subprocess
import sys

from distillery.cli.consoles import PIPED_WIDTH

CODE = (
    "from rich.table import Table\n"
    "from distillery.cli.consoles import make_console\n"
    "c = make_console()\n"
    "t = Table()\n"
    "names = [f'column_{i}' for i in range(13)]\n"
    "for n in names: t.add_column(n)\n"
    "t.add_row(*[f'value_{i}' for i in range(13)])\n"
    "c.print(t)\n"
)


def _run(**env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | env
    out = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, env=environ, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_wide_table_keeps_every_header_whole_when_piped():
    text = _run()
    for i in range(13):
        assert f"column_{i}" in text and f"value_{i}" in text
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= PIPED_WIDTH


def test_columns_still_decides_the_width():
    text = _run(COLUMNS="60")
    assert max(len(line) for line in text.splitlines()) <= 60
