"""Run a stage on several processes: ``accelerate launch`` of `distillery.training.launch` in a
subprocess group, with progress streamed back through a JSON-lines file.

The parent resolves platform datasets to local folders first (the callback cannot cross the
process boundary), writes the spec as JSON, tails the main rank's progress file (replaying
`on_progress` / `on_checkpoint`), polls `should_stop` and, to stop, terminates the whole process
group: the last checkpoint, written before, stays (an unfinished one lacks its
``trainer_state.json`` and is never resumed from). `should_pause` creates the flag file
``launch/pause``: the ranks agree on it at their next step, write a checkpoint there, report
`paused` in the progress file and exit.

On several machines (`launch_nodes_stage`) the caller's `StageHooks.launch_nodes` starts the
ranks (a Kubernetes Job on the platform) in a work folder every machine shares, and `supervise`
follows them exactly as it follows the local process group (`nodes.Ranks`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from distillery.spec import DatasetRef, ExperimentSpec
from distillery.training import checkpoints as ckpt
from distillery.training.hooks import NO_HOOKS, StageHooks
from distillery.training.nodes import NodeLaunch, Ranks
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
#: Seconds the ranks get to checkpoint and exit after a pause request before they are stopped.
PAUSE_GRACE_S = 240.0
#: The folder of a launch's files in the stage's folder, and its progress file.
LAUNCH_DIR = "launch"
EVENTS_FILE = "progress.jsonl"
#: The folder (in ``<stage>/launch/``) where failed ranks write their errors (`rank-<i>.txt`).
ERRORS_DIR = "errors"
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


class LocalRanks:
    """`Ranks` of a local ``accelerate launch``: its process group, its output in `log_path`."""

    def __init__(self, proc: subprocess.Popen, log_path: Path, num_processes: int) -> None:
        self.proc = proc
        self.log_path = log_path
        self.num_processes = num_processes

    def poll(self) -> int | None:
        return self.proc.poll()

    def terminate(self) -> None:
        if self.proc.poll() is None:
            _terminate(self.proc)

    def failure(self) -> str:
        return (
            f"`accelerate launch` on {self.num_processes} processes exited with code "
            f"{self.proc.returncode}; the end of {self.log_path}:\n{_tail(self.log_path)}"
        )


@dataclass(frozen=True)
class LaunchFiles:
    """The files of one launch in ``<stage>/launch/``: the spec the ranks read, the progress
    they write, the pause flag they watch, the launcher's log and the ranks' errors."""

    spec: Path
    events: Path
    pause_flag: Path
    log: Path
    errors: Path

    def rank_errors(self) -> str:
        """What the failed ranks wrote (`launch.record_error`), one line each, by rank."""
        found = sorted(self.errors.glob("rank-*.txt"), key=lambda f: int(f.stem.split("-")[1]))
        return "".join(f"{f.stem.replace('-', ' ')}: {f.read_text().strip()}\n" for f in found)

    @classmethod
    def prepare(
        cls,
        spec: ExperimentSpec,
        stage_dir: Path,
        resolve_root: Callable[[DatasetRef], Path] | None,
    ) -> LaunchFiles:
        """Write the spec (datasets as local roots); clear an earlier launch's progress and flag."""
        launch_dir = stage_dir / LAUNCH_DIR
        launch_dir.mkdir(parents=True, exist_ok=True)
        files = cls(
            spec=launch_dir / "spec.json",
            events=launch_dir / EVENTS_FILE,
            pause_flag=launch_dir / PAUSE_FLAG,
            log=launch_dir / "launch.log",
            errors=launch_dir / ERRORS_DIR,
        )
        files.spec.write_text(with_local_roots(spec, resolve_root).model_dump_json(indent=2))
        files.events.unlink(missing_ok=True)
        files.pause_flag.unlink(missing_ok=True)
        shutil.rmtree(files.errors, ignore_errors=True)
        return files


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
    files = LaunchFiles.prepare(spec, workdir / stage, hooks.resolve_root)
    cmd = launch_command(
        num_processes=num_processes,
        mixed_precision=mixed_precision,
        port=free_port(),
        spec_path=files.spec,
        stage=stage,
        workdir=workdir,
        events_path=files.events,
        teacher_path=teacher_path,
        tracker_group=tracker_group,
        teacher_cache_dir=hooks.teacher_cache_dir,
    )
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    from distillery.training.plan import plan_stage
    from distillery.training.runtime import resolve_threads

    threads = resolve_threads(plan_stage(spec, stage).train, spec.data.num_workers)
    env["OMP_NUM_THREADS"] = str(threads)  # each rank's share (see training.runtime)
    with files.log.open("w") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        return supervise(LocalRanks(proc, files.log, num_processes), stage, workdir, files, hooks)


def launch_nodes_stage(
    spec: ExperimentSpec,
    stage: str,
    workdir: Path,
    launch_nodes: Callable[[NodeLaunch], Ranks],
    *,
    num_nodes: int,
    processes_per_node: int,
    mixed_precision: str,
    teacher_path: Path | None = None,
    hooks: StageHooks = NO_HOOKS,
    tracker_group: str | None = None,
) -> StageResult:
    """Train `stage` on `num_nodes` machines started by `launch_nodes` (the platform's worker)
    and return its result, read from the shared `workdir` as after a local launch. The objects
    `launch_nodes` created are removed (`Ranks.terminate`) however the stage ends."""
    files = LaunchFiles.prepare(spec, workdir / stage, hooks.resolve_root)
    ranks = launch_nodes(
        NodeLaunch(
            stage=stage,
            spec_json=files.spec.read_text(),
            num_nodes=num_nodes,
            processes_per_node=processes_per_node,
            mixed_precision=mixed_precision,
            workdir=workdir,
            events_path=files.events,
            pause_flag=files.pause_flag,
            teacher_path=Path(teacher_path).resolve() if teacher_path is not None else None,
            tracker_group=tracker_group,
        )
    )
    try:
        return supervise(ranks, stage, workdir, files, hooks)
    finally:
        ranks.terminate()  # the machines' objects go, whatever the outcome


def supervise(
    ranks: Ranks, stage: str, workdir: Path, files: LaunchFiles, hooks: StageHooks
) -> StageResult:
    """Follow launched ranks to their end: replay their progress to `hooks`, pass on stop
    (terminate them: `StageCancelled`) and pause requests (the flag file: they checkpoint and
    exit, `StagePaused`; terminated after `PAUSE_GRACE_S`), and map how they ended to the
    stage's result or exception."""
    stage_dir = workdir / stage
    where = {"epoch": 0, "step": 0}
    # Without a callback, an interactive caller gets the bar a one-process stage would show.
    bar = ProgressReporter(stage, show_bar=hooks.on_progress is None and interactive())

    def seen(p: Progress) -> None:
        where["epoch"], where["step"] = p.epoch, p.step
        if hooks.on_progress is not None:
            hooks.on_progress(p)
        (bar.epoch_end if p.epoch_end else bar.step)(p)

    def stopped(exc: type[StageCancelled] | type[StagePaused]) -> BaseException:
        ranks.terminate()
        tail.poll()
        latest = ckpt.latest_checkpoint(stage_dir / "ckpt")
        return exc(stage, where["epoch"], where["step"], latest)

    tail = ProgressFile(files.events, seen, hooks.on_checkpoint)
    pause_since: float | None = None
    try:
        while (code := ranks.poll()) is None:
            tail.poll()
            if pause_since is None and hooks.pause_requested():
                files.pause_flag.touch()  # the ranks checkpoint at their next step and exit
                pause_since = time.monotonic()
            if hooks.stop_requested():
                raise stopped(StageCancelled)
            if pause_since is not None and time.monotonic() - pause_since > PAUSE_GRACE_S:
                raise stopped(StagePaused)  # e.g. machines never scheduled: nothing to save
            time.sleep(POLL_S)
        tail.poll()  # the records written just before the processes ended
    except BaseException:
        ranks.terminate()
        raise
    finally:
        bar.close()
    if tail.diverged is not None:
        raise StageDiverged(stage, *tail.diverged)
    # accelerate reports the ranks' exit after a pause as its own failure; on several machines
    # one may end before the main rank wrote `paused`: a requested pause that ended the ranks
    # without a result is a pause, and the stage resumes from its newest complete checkpoint.
    result_file = stage_dir / RESULT_FILE
    if tail.paused or (pause_since is not None and not result_file.is_file()):
        raise StagePaused(
            stage, where["epoch"], where["step"], ckpt.latest_checkpoint(stage_dir / "ckpt")
        )
    if code != 0:
        raise RuntimeError(f"stage {stage}: {files.rank_errors()}{ranks.failure()}")
    return StageResult.load(result_file)
