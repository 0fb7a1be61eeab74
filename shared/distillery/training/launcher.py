"""Run a stage on several processes: ``accelerate launch`` of `distillery.training.launch` in a
subprocess group, with progress streamed back through a JSON-lines file.

The parent resolves platform datasets to local folders first (the callback cannot cross the
process boundary), writes the spec as JSON, tails the main rank's progress file (replaying
`on_progress` / `on_checkpoint`), polls `should_stop` and, to stop, terminates the whole process
group: the last checkpoint, written before, stays (an unfinished one lacks its
``trainer_state.json`` and is never resumed from). `should_pause` creates the flag file
``launch/pause``: the ranks agree on it at their next step, write a checkpoint there, report
`paused` in the progress file and exit.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from distillery.spec import DatasetRef, ExperimentSpec
from distillery.training import checkpoints as ckpt
from distillery.training.hooks import NO_HOOKS, StageHooks
from distillery.training.progress import Progress, ProgressFile, ProgressReporter, interactive
from distillery.training.result import (
    RESULT_FILE,
    StageCancelled,
    StageDiverged,
    StagePaused,
    StageResult,
)

#: Seconds between polls of the progress file and `should_stop`.
POLL_S = 0.2
#: Seconds the processes get to exit after SIGTERM before SIGKILL.
TERMINATE_GRACE_S = 20.0
#: Exit code of the ranks after a pause checkpoint (EX_TEMPFAIL).
PAUSED_EXIT_CODE = 75
#: The flag file (in ``<stage>/launch/``) that asks the ranks to pause.
PAUSE_FLAG = "pause"


def free_port() -> int:
    """A TCP port free right now on localhost (for the rendezvous of the processes)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_local_roots(
    spec: ExperimentSpec, resolve_root: Callable[[DatasetRef], Path] | None
) -> ExperimentSpec:
    """`spec` with every dataset given as a local `root` (platform datasets resolved)."""
    if resolve_root is None:
        return spec

    def local(refs: list[DatasetRef]) -> list[DatasetRef]:
        return [
            r
            if r.root is not None
            else DatasetRef(format=r.format, root=str(Path(resolve_root(r)).resolve()))
            for r in refs
        ]

    data = spec.data.model_copy(
        update={"train": local(spec.data.train), "val": local(spec.data.val)}
    )
    return spec.model_copy(update={"data": data})


def launch_command(
    *,
    num_processes: int,
    mixed_precision: str,
    port: int,
    spec_path: Path,
    stage: str,
    workdir: Path,
    events_path: Path,
    teacher_path: Path | None = None,
    tracker_group: str | None = None,
    teacher_cache_dir: Path | None = None,
    num_machines: int = 1,
    machine_rank: int | str = 0,
    main_process_ip: str | None = None,
    python: str = sys.executable,
) -> list[str]:
    """``accelerate launch`` of the stage entry point on `num_processes` processes in all (GPUs,
    or gloo processes on a CPU: the entry point builds ``Accelerator(cpu=True)`` without CUDA),
    spread over `num_machines` machines that meet at `main_process_ip`:`port` (machine 0)."""
    cmd = [
        python, "-m", "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes", str(num_processes),
        "--num_machines", str(num_machines),
        "--mixed_precision", mixed_precision,
        "--dynamo_backend", "no",
        "--main_process_port", str(port),
        *(["--machine_rank", str(machine_rank)] if num_machines > 1 else []),
        *(["--main_process_ip", main_process_ip] if main_process_ip else []),
        "-m", "distillery.training.launch",
        "--spec", str(spec_path),
        "--stage", stage,
        "--workdir", str(workdir),
        "--events", str(events_path),
    ]  # fmt: skip
    if teacher_path is not None:
        cmd += ["--teacher", str(Path(teacher_path).resolve())]
    if tracker_group is not None:
        cmd += ["--tracker-group", tracker_group]
    if teacher_cache_dir is not None:
        cmd += ["--teacher-cache-dir", str(Path(teacher_cache_dir).resolve())]
    return cmd


def _terminate(proc: subprocess.Popen) -> None:
    """SIGTERM the launcher's process group (it and its ranks), SIGKILL after a grace period."""
    for sig, wait in ((signal.SIGTERM, TERMINATE_GRACE_S), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def launch_stage(
    spec: ExperimentSpec,
    stage: str,
    workdir: Path,
    *,
    num_processes: int,
    mixed_precision: str,
    teacher_path: Path | None = None,
    hooks: StageHooks = NO_HOOKS,
    tracker_group: str | None = None,
) -> StageResult:
    """Train `stage` on `num_processes` processes and return its result (see `run_stage`)."""
    stage_dir = workdir / stage
    launch_dir = stage_dir / "launch"
    launch_dir.mkdir(parents=True, exist_ok=True)
    spec_path = launch_dir / "spec.json"
    spec_path.write_text(with_local_roots(spec, hooks.resolve_root).model_dump_json(indent=2))
    events = launch_dir / "progress.jsonl"
    events.unlink(missing_ok=True)
    pause_flag = launch_dir / PAUSE_FLAG
    pause_flag.unlink(missing_ok=True)
    log_path = launch_dir / "launch.log"
    cmd = launch_command(
        num_processes=num_processes,
        mixed_precision=mixed_precision,
        port=free_port(),
        spec_path=spec_path,
        stage=stage,
        workdir=workdir,
        events_path=events,
        teacher_path=teacher_path,
        tracker_group=tracker_group,
        teacher_cache_dir=hooks.teacher_cache_dir,
    )
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    from distillery.training.plan import plan_stage
    from distillery.training.runtime import resolve_threads

    threads = resolve_threads(plan_stage(spec, stage).train, spec.data.num_workers)
    env["OMP_NUM_THREADS"] = str(threads)  # each rank's share (see training.runtime)

    where = {"epoch": 0, "step": 0}
    # Without a callback, an interactive caller gets the bar a one-process stage would show.
    bar = ProgressReporter(stage, show_bar=hooks.on_progress is None and interactive())

    def seen(p: Progress) -> None:
        where["epoch"], where["step"] = p.epoch, p.step
        if hooks.on_progress is not None:
            hooks.on_progress(p)
        (bar.epoch_end if p.epoch_end else bar.step)(p)

    tail = ProgressFile(events, seen, hooks.on_checkpoint)
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            while proc.poll() is None:
                tail.poll()
                if not pause_flag.exists() and hooks.pause_requested():
                    pause_flag.touch()  # the ranks checkpoint at their next step and exit
                if hooks.stop_requested():
                    _terminate(proc)
                    tail.poll()
                    raise StageCancelled(
                        stage, where["epoch"], where["step"],
                        ckpt.latest_checkpoint(stage_dir / "ckpt"),
                    )  # fmt: skip
                time.sleep(POLL_S)
            tail.poll()  # the records written just before the processes ended
        except BaseException:
            if proc.poll() is None:
                _terminate(proc)
            raise
        finally:
            bar.close()
    if tail.diverged is not None:
        raise StageDiverged(stage, *tail.diverged)
    if tail.paused:  # accelerate reports the ranks' exit as its own failure
        raise StagePaused(
            stage, where["epoch"], where["step"], ckpt.latest_checkpoint(stage_dir / "ckpt")
        )
    if proc.returncode != 0:
        raise RuntimeError(
            f"stage {stage}: `accelerate launch` on {num_processes} processes exited with code "
            f"{proc.returncode}; the end of {log_path}:\n{_tail(log_path)}"
        )
    return StageResult.load(stage_dir / RESULT_FILE)
