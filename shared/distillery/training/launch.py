"""Entry point of one stage in the current process(es):

    python -m distillery.training.launch --spec SPEC.json --stage STAGE --workdir DIR \
        [--teacher PATH] [--teacher-cache-dir DIR]

Run it plainly for one process, or under ``accelerate launch`` for several (as `run_stage`
does when ``train.num_processes > 1``). The main rank writes ``DIR/<stage>/result.json`` and
appends progress to ``--events``; every rank writes ``DIR/<stage>/result/rank-<i>.json`` with a
hash of its final weights and what it evaluated, to check that processes agree. When the
parent creates ``DIR/<stage>/launch/pause``, the ranks agree on it at the same step (a max over
processes), write a checkpoint there and exit with `PAUSED_EXIT_CODE`. A rank that fails writes
its error to ``DIR/<stage>/launch/errors/rank-<i>.txt``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
from dataclasses import replace
from pathlib import Path

import torch

from distillery.spec import SpecError, load_spec
from distillery.training.hooks import StageHooks
from distillery.training.launcher import ERRORS_DIR, LAUNCH_DIR, PAUSE_FLAG, PAUSED_EXIT_CODE
from distillery.training.result import StagePaused


def pause_flag_checker(flag: Path) -> StageHooks:
    """Hooks whose `should_pause` is True on every rank at the same step once `flag` exists:
    each rank looks for the file and the ranks take the max (one tiny all-reduce per step)."""
    import torch.distributed as dist

    def should_pause() -> bool:
        seen = torch.tensor([1.0 if flag.exists() else 0.0])
        if dist.is_available() and dist.is_initialized():
            if dist.get_backend() == "nccl":
                seen = seen.cuda()
            dist.all_reduce(seen, op=dist.ReduceOp.MAX)
        return bool(seen.item() > 0)

    return StageHooks(should_pause=should_pause)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m distillery.training.launch", description=__doc__)
    p.add_argument("--spec", type=Path, required=True, help="experiment spec (YAML or JSON)")
    p.add_argument("--stage", required=True, choices=("teacher", "student", "distill"))
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--teacher", type=Path, default=None, help="the teacher's exported model.pt")
    p.add_argument("--events", type=Path, default=None, help="JSON-lines progress file")
    p.add_argument("--tracker-group", default=None)
    p.add_argument(
        "--teacher-cache-dir", type=Path, default=None, help="where teacher caches are kept"
    )
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    return p.parse_args(argv)


def record_error(launch_dir: Path, error: BaseException) -> None:
    """Write this rank's error to ``launch/errors/rank-<RANK>.txt``, where the launcher (on
    this machine or, through the shared work folder, the worker owning a multi-node stage) puts
    it at the top of the stage's error: the end of a rank's log is torchrun's own report."""
    where = ""
    if error.__traceback__ is not None:
        frame = traceback.extract_tb(error.__traceback__)[-1]
        where = f" (at {frame.filename}:{frame.lineno})"
    errors = launch_dir / ERRORS_DIR
    rank = os.environ.get("RANK", "0")
    with contextlib.suppress(OSError):  # the error itself is raised either way
        errors.mkdir(parents=True, exist_ok=True)
        (errors / f"rank-{rank}.txt").write_text(f"{type(error).__name__}: {error}{where}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    launch_dir = args.workdir.resolve() / args.stage / LAUNCH_DIR
    try:
        return run(args, launch_dir)
    except Exception as e:
        record_error(launch_dir, e)
        raise


def run(args: argparse.Namespace, launch_dir: Path) -> int:
    try:
        spec = load_spec(args.spec)
    except SpecError as e:
        print(e, file=sys.stderr)
        record_error(launch_dir, e)
        return 2

    from distillery.training.trainer import train_stage

    workdir = args.workdir.resolve()
    try:
        outcome = train_stage(
            spec,
            args.stage,
            workdir,
            teacher_path=args.teacher,
            resume=not args.no_resume,
            hooks=replace(
                pause_flag_checker(launch_dir / PAUSE_FLAG),
                teacher_cache_dir=args.teacher_cache_dir,
            ),
            tracker_group=args.tracker_group,
            events_path=args.events,
        )
    except StagePaused as e:
        print(e, file=sys.stderr)
        return PAUSED_EXIT_CODE
    report_dir = args.workdir.resolve() / args.stage / "result"
    report_dir.mkdir(parents=True, exist_ok=True)
    ev = outcome.evaluation
    report = {
        "rank": outcome.rank,
        "world_size": outcome.world_size,
        "state_hash": outcome.state_hash,
        "val_names": ev.local_names if ev else [],
        "val_pixels_local": ev.local_pixels if ev else 0,
        "val_pixels_total": ev.metrics.num_pixels if ev else 0,
        "miou": ev.metrics.miou if ev else None,
        "synced_norms": outcome.synced_norms,
    }
    (report_dir / f"rank-{outcome.rank}.json").write_text(json.dumps(report, indent=2))
    if outcome.rank == 0:
        r = outcome.result
        print(f"{args.stage}: mIoU {r.metrics.get('miou', float('nan')):.4f}, model {r.model_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
