"""Tables the CLI prints in more than one command."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from distillery.stages.results import results_caption


def results_table(results: dict[str, Any]) -> Table:
    """The comparison table for the terminal (results.md holds the same as Markdown)."""
    table = Table(title="Results", caption=results_caption(results))
    for col in ("model", "mIoU %", "gain", "params (M)", "GFLOPs", "latency ms"):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)

    def fmt(v: float | None, spec: str) -> str:
        return "—" if v is None else format(v, spec)

    for r in results["rows"]:
        gain = None if r["stage"] == "student" else r["gain_over_baseline"]
        table.add_row(
            r["model"],
            fmt(r["miou"] and 100 * r["miou"], ".1f"),
            fmt(gain and 100 * gain, "+.1f"),
            fmt(r["params"] and r["params"] / 1e6, ".3f"),
            fmt(r["gflops"], ".3f"),
            fmt(r["latency_ms"], ".2f"),
        )
    return table
