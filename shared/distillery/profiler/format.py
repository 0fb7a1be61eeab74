"""Human-readable profiles: a rich Table for the terminal, Markdown for report.md."""

from __future__ import annotations

from rich.table import Table

from distillery.profiler.report import BudgetVerdict, ProfileReport, ProfileRow, WidthSearch

FASTEST = "★"
HEADERS = [
    "variant",
    "batch",
    "p50 ms",
    "mean ± std ms",
    "p90 ms",
    "p99 ms",
    "1st call ms",
    "img/s",
    "GFLOP/s",
    "% peak",
    "peak MB",
    "cv",
    "n",
    "stable",
]


def _f(v: float | None, fmt: str = ".2f") -> str:
    return "—" if v is None else format(v, fmt)


def _cells(r: ProfileRow) -> list[str]:
    name = f"{r.variant} {FASTEST}" if r.fastest else r.variant
    if r.status != "ok" or r.latency_ms is None:
        return [name, str(r.batch_size), f"{r.status}: {r.note or ''}", *[""] * (len(HEADERS) - 3)]
    lat = r.latency_ms
    return [
        name,
        str(r.batch_size),
        _f(lat.p50),
        f"{lat.mean:.2f} ± {lat.std:.2f}",
        _f(lat.p90),
        _f(lat.p99),
        _f(lat.first_call),
        _f(r.images_per_s, ".1f"),
        _f(r.gflops_per_s, ".1f"),
        _f(None if r.fraction_of_peak is None else 100 * r.fraction_of_peak, ".1f"),
        _f(r.peak_memory_mb, ".1f"),
        _f(lat.cv, ".3f"),
        str(lat.repeats),
        "yes" if lat.stable else "NO",
    ]


def _title(report: ProfileReport) -> str:
    m, d = report.model, report.device
    shape = f"width {m.width}, depth {m.depth}" if m.width is not None else m.arch
    return (
        f"{m.arch} ({shape}, {m.params / 1e6:.3f} M params, "
        f"{m.flops_per_image / 1e9:.2f} GFLOP/image) at {report.input_size[0]}x"
        f"{report.input_size[1]} on {d.name} ({d.device}, {d.num_threads} threads, "
        f"torch {d.torch_version})"
    )


def _caption(report: ProfileReport) -> str:
    peaks = ", ".join(f"{p.precision} {p.gflops_per_s:.0f} GFLOP/s" for p in report.peaks)
    busy = ""
    if report.busy and report.load_average:
        top = max(la[0] for la in report.load_average)
        busy = (
            f"WARNING: load average {top:.1f} on {report.device.cpu_count} CPUs while "
            "profiling: other work shared the machine, timings are inflated. "
        )
    return busy + (
        f"Latency per batch. {FASTEST} fastest at its batch size. % peak: achieved GFLOP/s over "
        f"the measured matmul peak ({peaks or 'not measured'}); far below 100% means memory "
        f"traffic or launch overhead, not arithmetic, sets the time. FLOPs: 1 multiply-add = "
        f"2 FLOPs (torch.utils.flop_counter). cv: robust (1.4826·MAD/median)."
    )


def budget_line(v: BudgetVerdict) -> str:
    where = (
        f"{v.statistic} at batch {v.batch_size}, {v.input_size[0]}x{v.input_size[1]}, {v.precision}"
    )
    if v.verdict == "not_measured":
        return f"Budget {v.budget_ms:g} ms ({where}): not measured — {v.note}"
    word = "PASS" if v.verdict == "pass" else "FAIL"
    spare = "to spare" if v.verdict == "pass" else "over"
    extra = "" if v.stable else " (measurement not stable)"
    return (
        f"Budget {v.budget_ms:g} ms ({where}): {word} — {v.variant} {v.measured_ms:.2f} ms, "
        f"{abs(v.margin_ms or 0):.2f} ms ({abs(v.margin_pct or 0):.1f}%) {spare}{extra}"
    )


def format_report(report: ProfileReport) -> Table:
    """The variant x batch-size table; the fastest row per batch size is starred."""
    table = Table(title=_title(report), caption=_caption(report), caption_justify="left")
    for h in HEADERS:
        table.add_column(h, justify="left" if h in ("variant", "stable") else "right")
    for r in report.rows:
        style = "bold green" if r.fastest else ("dim" if r.status != "ok" else None)
        if r.latency_ms is not None and not r.latency_ms.stable:
            style = style or "yellow"
        table.add_row(*_cells(r), style=style)
    return table


def report_markdown(report: ProfileReport) -> str:
    """The profile as Markdown: device, model, the table, the budget verdict, the width search."""
    d, m = report.device, report.model
    gpu = (
        f"; GPU {d.gpu_name}, driver {d.driver_version}, CUDA {d.cuda_version}"
        if d.gpu_name
        else ""
    )
    lines = [
        f"## Profile: {_title(report)}",
        "",
        f"- Device: {d.device}; CPU {d.cpu_model}, {d.num_threads} torch threads of "
        f"{d.cpu_count} CPUs{gpu}; torch {d.torch_version}",
        f"- Model: {m.arch} from {m.source}; {m.params:,} params ({m.weights_mb:.2f} MB); "
        f"{m.flops_per_image:,} FLOPs per image at {m.input_size[0]}x{m.input_size[1]}",
        f"- Settings: {', '.join(f'{k}={v}' for k, v in report.settings.items())}",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "|".join("---" if h in ("variant", "stable") else "---:" for h in HEADERS) + "|",
    ]
    for r in report.rows:
        lines.append("| " + " | ".join(c.replace("|", "/") for c in _cells(r)) + " |")
    lines += ["", _caption(report)]
    if report.budget:
        lines += ["", f"**{budget_line(report.budget)}**"]
    if report.width_search:
        lines += ["", width_search_markdown(report.width_search)]
    return "\n".join(lines) + "\n"


def _search_cells(c) -> list[str]:  # noqa: ANN001
    return [
        str(c.width),
        str(c.depth),
        f"{c.params / 1e6:.3f}",
        f"{c.flops_per_image / 1e9:.2f}",
        _f(c.latency_ms),
        _f(c.cv, ".3f"),
        {True: "fits", False: "misses", None: c.status}[c.fits]
        if c.status == "measured"
        else f"{c.status}: {c.note or ''}",
        _f(c.margin_ms),
    ]


SEARCH_HEADERS = [
    "width",
    "depth",
    "M params",
    "GFLOP/img",
    "latency ms",
    "cv",
    "verdict",
    "margin ms",
]


def _search_title(s: WidthSearch) -> str:
    chosen = f"chose width {s.chosen_width}" if s.chosen_width else "no width fits"
    return (
        f"Student width search: {chosen} — budget {s.budget_ms:g} ms ({s.statistic}, batch "
        f"{s.batch_size}, {s.input_size[0]}x{s.input_size[1]}, {s.variant}) on {s.device.name}"
    )


def format_width_search(search: WidthSearch) -> Table:
    table = Table(title=_search_title(search))
    for h in SEARCH_HEADERS:
        table.add_column(h, justify="left" if h == "verdict" else "right")
    for c in search.candidates:
        chosen = c.width == search.chosen_width
        table.add_row(*_search_cells(c), style="bold green" if chosen else None)
    return table


def width_search_markdown(search: WidthSearch) -> str:
    lines = [
        f"### {_search_title(search)}",
        "",
        "| " + " | ".join(SEARCH_HEADERS) + " |",
        "|" + "|".join("---" if h == "verdict" else "---:" for h in SEARCH_HEADERS) + "|",
    ]
    for c in search.candidates:
        cells = _search_cells(c)
        if c.width == search.chosen_width:
            cells[0] = f"**{cells[0]}** {FASTEST}"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
