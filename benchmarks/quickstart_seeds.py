"""Is the quickstart's distillation gain real? The whole quickstart pipeline for several seeds.

    python benchmarks/quickstart_seeds.py [examples/quickstart.yaml] [--seeds 0,1,2] [--out DIR]
                                          [--jobs 1] [--no-tracking] [--no-profile]

Runs the spec (teacher -> student baseline -> distilled student [-> profile]) once per seed,
overriding only the spec's `seed` (`data.synthetic.seed` stays fixed, so every seed trains on the
same generated data, made once), each in its own run folder under `--out` (default: a new
temporary folder). Prints one row per seed: teacher / baseline / distilled mIoU, the gain
(distilled - baseline, mIoU points), the gap closed ((distilled - baseline) / (teacher -
baseline)) and the run's wall time; then the mean +- sample std of the gain and of the gap
closed over the seeds.

The baseline and the distilled student share steps, epochs, data and seed by construction (the
spec's `distillation.train` should stay unset), so a gain that is positive for every seed and
larger than its std is the distillation's, not noise.

Relative dataset roots are resolved against the current directory, as `distillery run` does.
`--jobs N` runs N seeds at once (each with cpu_count // N torch threads): quicker in total, but
the per-seed wall times are then not those of a run alone on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from distillery.spec import ExperimentSpec, load_spec

REPO = Path(__file__).resolve().parents[1]


def seeded_spec(
    spec: ExperimentSpec, seed: int, *, tracking: bool, profile: bool
) -> ExperimentSpec:
    """`spec` with `seed` set (and optionally no tracking / no profile stage); data untouched."""
    update: dict[str, Any] = {"seed": seed}
    if not tracking:
        update["tracking"] = spec.tracking.model_copy(update={"mode": "disabled"})
    if not profile:
        update["stages"] = [s for s in spec.stages if s != "profile"]
    return spec.model_copy(update=update)


def absolute_roots(spec: ExperimentSpec, base: Path) -> ExperimentSpec:
    """Relative `root`s of `data.train` / `data.val` made absolute against `base`."""

    def fix(refs: list[Any]) -> list[Any]:
        return [
            r
            if r.root is None or Path(r.root).is_absolute()
            else r.model_copy(update={"root": str((base / r.root).resolve())})
            for r in refs
        ]

    data = spec.data.model_copy(update={"train": fix(spec.data.train), "val": fix(spec.data.val)})
    return spec.model_copy(update={"data": data})


def run_seed(spec_json: dict[str, Any], run_dir: str, threads: int | None) -> dict[str, Any]:
    """One seed's full pipeline (in this process or a worker); its mIoUs and wall time."""
    import torch

    from distillery.pipeline import run_local

    if threads:
        torch.set_num_threads(threads)
    spec = ExperimentSpec.model_validate(spec_json)
    t0 = time.perf_counter()
    results = run_local(spec, Path(run_dir), fresh=True)
    wall = time.perf_counter() - t0
    miou = {r["stage"]: r["miou"] for r in results["rows"]}
    return {
        "seed": spec.seed,
        "teacher": miou.get("teacher"),
        "baseline": miou.get("student"),
        "distilled": miou.get("distill"),
        "gap_closed": results.get("gap_closed"),
        "wall_s": wall,
        "run_dir": run_dir,
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _pct(v: float | None, fmt: str = ".1f") -> str:
    return "—" if v is None else format(100 * v, fmt)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("spec", nargs="?", default=str(REPO / "examples" / "quickstart.yaml"))
    p.add_argument("--seeds", default="0,1,2", help="comma-separated spec seeds (default 0,1,2)")
    p.add_argument("--out", type=Path, default=None, help="parent of the per-seed run folders")
    p.add_argument("--jobs", type=int, default=1, help="seeds run at once (default 1)")
    p.add_argument("--no-tracking", action="store_true", help="tracking.mode: disabled")
    p.add_argument("--no-profile", action="store_true", help="leave out the profile stage")
    args = p.parse_args(argv)

    from distillery.data import ensure_synthetic

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    spec = absolute_roots(load_spec(args.spec), Path.cwd())
    out = args.out or Path(tempfile.mkdtemp(prefix="quickstart-seeds-"))
    out.mkdir(parents=True, exist_ok=True)
    console = Console(width=max(Console().width, 100))
    console.print(f"spec {args.spec}, seeds {seeds}, run folders under {out}")

    t0 = time.perf_counter()
    ensure_synthetic(spec.data)  # once, shared by every seed
    gen_s = time.perf_counter() - t0

    jobs = max(1, min(args.jobs, len(seeds)))
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    todo = [
        (
            seeded_spec(
                spec, s, tracking=not args.no_tracking, profile=not args.no_profile
            ).model_dump(mode="json"),
            str(out / f"seed{s}"),
            threads,
        )
        for s in seeds
    ]
    if jobs == 1:
        rows = []
        for item in todo:
            rows.append(run_seed(*item))
            r = rows[-1]
            console.print(
                f"seed {r['seed']}: teacher {_pct(r['teacher'])}, baseline {_pct(r['baseline'])},"
                f" distilled {_pct(r['distilled'])} ({r['wall_s']:.0f} s)"
            )
    else:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            rows = list(pool.map(run_seed, *zip(*todo, strict=True)))

    table = Table(title=f"Quickstart over seeds ({Path(args.spec).name})")
    for col in ("seed", "teacher", "baseline", "distilled", "gain", "gap closed", "wall (s)"):
        table.add_column(col, justify="right", no_wrap=True)
    gains, gaps = [], []
    for r in rows:
        gain = (
            r["distilled"] - r["baseline"] if None not in (r["distilled"], r["baseline"]) else None
        )
        if gain is not None:
            gains.append(gain)
        if r["gap_closed"] is not None:
            gaps.append(r["gap_closed"])
        table.add_row(
            str(r["seed"]),
            _pct(r["teacher"]),
            _pct(r["baseline"]),
            _pct(r["distilled"]),
            _pct(gain, "+.1f"),
            _pct(r["gap_closed"], ".0f") + ("%" if r["gap_closed"] is not None else ""),
            f"{r['wall_s']:.0f}",
        )
    (gm, gs), (pm, ps) = _mean_std(gains), _mean_std(gaps)
    table.add_section()
    table.add_row(
        "mean ± std",
        "",
        "",
        "",
        f"{100 * gm:+.1f} ± {100 * gs:.1f}",
        f"{100 * pm:.0f} ± {100 * ps:.0f}%",
        "",
    )
    if len(gains) > 1:
        from distillery.research.stats import CI_METHOD, t_interval

        ci = t_interval(gains)
        table.add_row("95% CI", "", "", "", f"[{100 * ci.low:+.1f}, {100 * ci.high:+.1f}]", "", "")
    console.print(table)
    if len(gains) > 1:
        console.print(CI_METHOD + ".")
    console.print(
        "mIoU (validation, %) and gain in points;"
        " gap closed = (distilled − baseline) / (teacher − baseline)."
        f" Data generated once in {gen_s:.0f} s."
        + (f" {jobs} seeds ran at once, {threads} threads each." if jobs > 1 else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
