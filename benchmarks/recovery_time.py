"""Recovery times with the default settings (lease 30 s renewed every 10 s; reconciler every
10 s, a queued stage's message re-sent after 30 s): how long a running stage is without a worker.

Starts its own platform (`tests.support.platform`: Postgres schema, Redis queues, an S3 server)
with two GPU workers on one queue and the reconciler, then for each fault trains a tiny stage,
does the fault to the worker running it and measures until the stage runs again (its next
claim, `attempts` + 1, on a live worker):

- SIGKILL of the whole worker (parent and pool process), seen from another host (the reconciler
  runs in its own UTS namespace with another host name, as on another node): the lease expires,
  the reconciler re-queues the stage;
- the same, with the reconciler on the worker's host: it sees that the holder process is gone
  and re-queues the stage at its next pass;
- SIGKILL of the pool process only: Celery redelivers the message at once and the new pool
  process takes the stage over (its holder is a dead process of this host);
- SIGTERM to the worker (eviction, scale-down): the stage checkpoints at its next step, gives
  its lease back and is re-enqueued;
- the stage's message deleted from Redis before any worker took it (the workers stop consuming
  while it is submitted and deleted, then listen again, idle): the reconciler re-sends it.

    python benchmarks/recovery_time.py
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distillery.db import Stage  # noqa: E402
from services.celery_app import make_celery  # noqa: E402
from tests.support import devstack  # noqa: E402
from tests.support.experiments import submit, tiny_spec  # noqa: E402
from tests.support.platform import Platform, local_platform  # noqa: E402


def _stage(p: Platform, stage_id: int) -> Stage:
    with p.sessions() as s:
        return s.get(Stage, stage_id)


def _worker(p: Platform, name: str) -> devstack.Process:
    return p.stack.enter_context(
        devstack.start_worker(
            p.env, p.settings.gpu_queue, 1, log_path=p.tmp / f"{name}.log", node=f"{name}@%h"
        )
    )


def _running(p: Platform, stage_id: int, attempts: int) -> Stage:
    def check() -> Stage | None:
        st = _stage(p, stage_id)
        return st if st.attempts >= attempts and st.status.value == "running" else None

    return devstack.wait_until(check, 300, f"stage {stage_id} attempt {attempts}", 0.1)


def _holder(p: Platform, workers: list[devstack.Process], stage: Stage) -> devstack.Process:
    pid = int(stage.worker_id.rsplit(":", 1)[1])
    from services.worker.preemption import child_pids

    return next(w for w in workers if pid in child_pids(w.popen.pid))


def _reconciler(p: Platform, host: str | None) -> devstack.Process:
    argv = [sys.executable, "-m", "services.worker.reconcile"]
    if host is not None:  # as if on another node: its own host name
        argv = ["unshare", "--uts", "sh", "-c", f"hostname {host} && exec {' '.join(argv)}"]
    return devstack.spawn(argv, p.env, p.tmp / f"reconciler-{host}.log", "reconciler")


def main() -> None:
    rows = []
    with local_platform("recovery") as p:
        reconciler = _reconciler(p, "another-node")
        workers = [_worker(p, "w1"), _worker(p, "w2")]
        data = p.tmp / "data"

        def spec(name: str):  # noqa: ANN202
            return tiny_spec(
                name, data, epochs=2, steps=40, stages=["student"], num_train=80, num_val=4
            )

        faults = (
            "worker killed (reconciler on another node)",
            "worker killed (reconciler on its node)",
            "pool process killed",
            "SIGTERM (preemption)",
        )
        for fault in faults:
            if fault == faults[1]:
                reconciler.stop()
                reconciler = p.stack.enter_context(_reconciler(p, None))
            _exp, (stage_id,) = submit(p.sessions, p.settings, spec(fault.split()[0]))
            devstack.wait_until(lambda i=stage_id: _stage(p, i).step >= 3, 300, "training", 0.1)
            stage = _stage(p, stage_id)
            victim = _holder(p, workers, stage)
            t0 = time.monotonic()
            if fault.startswith("worker killed"):
                victim.kill_group()
            elif fault == "pool process killed":
                os.kill(int(stage.worker_id.rsplit(":", 1)[1]), signal.SIGKILL)
            else:
                victim.popen.send_signal(signal.SIGTERM)
            _running(p, stage_id, stage.attempts + 1)
            rows.append((fault, time.monotonic() - t0))
            print(f"{fault}: running again after {rows[-1][1]:.1f} s", flush=True)
            if not victim.alive():
                workers.remove(victim)
                workers.append(_worker(p, f"w{len(rows) + 2}"))

        import redis

        rds = redis.Redis.from_url(p.settings.broker_url)
        control = make_celery(p.settings).control
        queue = p.settings.gpu_queue
        control.cancel_consumer(queue, reply=True)  # idle workers that take nothing for now
        _exp, (stage_id,) = submit(p.sessions, p.settings, spec("lost"))
        assert rds.delete(queue) == 1, "the message was taken before it could be lost"
        t0 = time.monotonic()
        control.add_consumer(queue, reply=True)
        _running(p, stage_id, 1)
        rows.append(("message lost from Redis", time.monotonic() - t0))
        print(f"message lost: running after {rows[-1][1]:.1f} s", flush=True)

    print()
    print("| fault | stage running again after (s) |")
    print("|---|---:|")
    for fault, seconds in rows:
        print(f"| {fault} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
