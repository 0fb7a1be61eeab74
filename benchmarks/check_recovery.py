"""How long a dataset check is without a checker after its checker is SIGKILLed, with the
default settings (lease 30 s renewed every 10 s; reconciler every 10 s).

    python benchmarks/check_recovery.py [--runs N]

Starts its own platform (`tests.support.platform`), the gateway, two checkers on the cpu queue
and the reconciler (`--interval 10 --stale-after 30`, on this host), uploads a synthetic
Cityscapes-layout dataset (48 + 8 images of 256x512), SIGKILLs the process group of the checker
holding its check (its Celery worker, pool process and the check's child) and measures until the
other checker holds it again (`check_attempts` 2) and until it is `ready`. Prints a table.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tarfile
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distillery.data.synthetic import generate_synthetic  # noqa: E402
from distillery.db import Dataset  # noqa: E402
from distillery.db.auth import create_user  # noqa: E402
from tests.support import devstack  # noqa: E402
from tests.support.datasets import wait_checked  # noqa: E402
from tests.support.platform import Platform, local_platform  # noqa: E402


def _archive(tmp: Path) -> Path:
    root = tmp / "data"
    generate_synthetic(root, "cityscapes", num_train=48, num_val=8, image_size=(256, 512), seed=0)
    archive = tmp / "data.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for p in sorted(root.iterdir()):
            tf.add(p, arcname=p.name)
    return archive


def _row(p: Platform, dataset_id: str) -> Dataset:
    with p.sessions() as s:
        return s.get(Dataset, dataset_id)


def _holding(checkers: list[devstack.Process], holder: str) -> devstack.Process:
    pid = int(holder.rpartition(":")[2])
    for proc in checkers:
        tree = [proc.popen.pid, *(c.pid for c in psutil.Process(proc.popen.pid).children(True))]
        if pid in tree:
            return proc
    raise LookupError(f"no checker runs {holder}")


def one_run(p: Platform, http: httpx.Client, archive: Path, run: int) -> tuple[float, float]:
    checkers = [
        p.stack.enter_context(
            devstack.start_checker(
                p.env, p.settings.cpu_queue, log_path=p.tmp / f"checker-{run}-{i}.log"
            )
        )
        for i in range(2)
    ]
    with open(archive, "rb") as f:
        r = http.post(
            "/datasets",
            data={"name": f"run-{run}", "format": "cityscapes"},
            files={"file": (archive.name, f, "application/gzip")},
        )
    assert r.status_code == 202, r.text
    dataset_id = r.json()["id"]
    holder = devstack.wait_until(lambda: _row(p, dataset_id).check_holder, 120, "a holder", 0.05)
    victim = _holding(checkers, holder)
    victim.kill_group(signal.SIGKILL)
    t0 = time.monotonic()
    devstack.wait_until(
        lambda: _row(p, dataset_id).check_attempts >= 2, 300, "the check held again", 0.1
    )
    held_again = time.monotonic() - t0
    ds = wait_checked(http.get, dataset_id, timeout_s=600)
    assert ds["status"] == "ready", ds
    ready = time.monotonic() - t0
    for proc in checkers:
        proc.stop()
    return held_again, ready


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with local_platform("checkrec") as p:
        with p.sessions() as s:
            _, token = create_user(s, "bench")
        gw = p.stack.enter_context(devstack.start_gateway(p.env, p.tmp / "gateway.log"))
        argv = [sys.executable, "-m", "services.worker.reconcile", "--interval", "10"]
        reconciler = devstack.spawn(
            [*argv, "--stale-after", "30"], p.env, p.tmp / "reconciler.log", "reconciler"
        )
        p.stack.callback(reconciler.stop)
        http = httpx.Client(
            base_url=gw.url, headers={"Authorization": f"Bearer {token}"}, timeout=120
        )
        archive = _archive(p.tmp)
        packed_mb = archive.stat().st_size / 1e6
        rows = [one_run(p, http, archive, run) for run in range(args.runs)]
    print(f"\ncheck of 48 + 8 images of 256x512 ({packed_mb:.1f} MB packed)")
    print("| run | held again after (s) | ready after (s) |")
    print("|---:|---:|---:|")
    for i, (held, ready) in enumerate(rows, 1):
        print(f"| {i} | {held:.1f} | {ready:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
