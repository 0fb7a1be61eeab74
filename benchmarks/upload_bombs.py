"""Hostile uploads against a real gateway and checker: the answer, the check's outcome, the
time and the peak memory of each.

    python benchmarks/upload_bombs.py

Starts its own platform (`tests.support.platform`: a throwaway Postgres schema, an S3 server with
fresh buckets), the gateway under uvicorn and a dataset checker on the cpu queue, uploads each
hostile archive of `tests/support/bombs.py` and prints, per input: packed size, HTTP status,
seconds to answer, the peak resident memory of the gateway process tree while it answered
(sampled every 10 ms); for an accepted upload (202) the status its check ended with, the check's
seconds, the peak resident memory of the check's child process (`wait4`) and of the whole checker
process tree (sampled), and the start of the error message.
Loopback only, bounded (a few seconds per input).
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import suppress
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distillery.db.auth import create_user  # noqa: E402
from distillery.s3 import make_storage  # noqa: E402
from tests.support import bombs, devstack  # noqa: E402
from tests.support.datasets import wait_checked  # noqa: E402
from tests.support.platform import local_platform  # noqa: E402


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


class PeakSampler:
    """The peak of `tree_rss(proc)`, sampled every 10 ms in a thread while in the block."""

    def __init__(self, proc: psutil.Process) -> None:
        self.proc, self.peak, self._stop = proc, tree_rss(proc), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.proc))
            time.sleep(0.01)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cases() -> list[tuple[str, str, bytes]]:
    cs = bombs.tar_gz_of({f"leftImg8bit/train/a/{i}.png": bombs.png_bomb(64, 64) for i in range(8)})
    return [
        ("20000x20000 PNG in a tar", "bomb.tar", bombs.png_bomb_tar()),
        ("20000x20000 PNG in a tar.gz", "bomb.tar.gz", bombs.png_bomb_tar("w:gz")),
        ("1 GiB of zeros in a zip", "zeros.zip", bombs.zeros_zip(1 << 30)),
        ("truncated tar.gz", "cut.tar.gz", cs[: len(cs) // 2]),
        ("corrupt zip", "bad.zip", bombs.corrupt(bombs.zip_of({"a.png": b"x" * 5000}))),
        ("zip member ..\\evil.png", "win.zip", bombs.zip_of({"..\\evil.png": b"x"})),
    ]


def main() -> int:
    with local_platform("bombs") as platform:
        stack, tmp, settings = platform.stack, platform.tmp, platform.settings
        with platform.sessions() as s:
            _, token = create_user(s, "bench")
        gw = stack.enter_context(devstack.start_gateway(platform.env, tmp / "gateway.log"))
        checker = stack.enter_context(
            devstack.start_checker(platform.env, settings.cpu_queue, log_path=tmp / "checker.log")
        )
        proc, checker_proc = psutil.Process(gw.popen.pid), psutil.Process(checker.popen.pid)
        print(
            f"at rest: gateway RSS {tree_rss(proc) / 2**20:.0f} MB, checker RSS "
            f"{tree_rss(checker_proc) / 2**20:.0f} MB; check limits "
            f"{settings.check_memory_mb} MB, {settings.check_timeout_s:g} s\n"
        )
        head = (
            f"{'input':<28} {'packed':>10} {'answer':>6} {'s':>5} {'gw MB':>6} "
            f"{'check':>8} {'s':>5} {'child MB':>8} {'checker MB':>10}  message"
        )
        print(head)
        print("-" * (len(head) + 40))
        http = httpx.Client(
            base_url=gw.url, headers={"Authorization": f"Bearer {token}"}, timeout=120
        )
        for what, filename, data in cases():
            with PeakSampler(proc) as gw_peak:
                t0 = time.perf_counter()
                r = http.post(
                    "/datasets",
                    data={"name": "bench", "format": "cityscapes"},
                    files={"file": (filename, data, "application/octet-stream")},
                )
                elapsed = time.perf_counter() - t0
            line = f"{what:<28} {len(data):>10} {r.status_code:>6} {elapsed:>5.2f} "
            line += f"{gw_peak.peak / 2**20:>6.0f} "
            if r.status_code == 202:
                with PeakSampler(checker_proc) as checker_peak:
                    ds = wait_checked(http.get, r.json()["id"])
                check = (ds.get("summary") or {}).get("check", {})
                msg = ds.get("error") or ""
                line += (
                    f"{ds['status']:>8} {check.get('seconds', 0):>5.1f} "
                    f"{check.get('peak_rss_mb', 0):>8.0f} {checker_peak.peak / 2**20:>10.0f}  "
                )
            else:
                detail = r.json().get("detail")
                msg = detail[0]["msg"] if isinstance(detail, list) else str(detail)
                line += f"{'-':>8} {'-':>5} {'-':>8} {'-':>10}  "
            print(line + msg[:80])
        left = make_storage(settings, settings.datasets_bucket).list("")
        print(f"\nobjects left in the datasets bucket: {len(left)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
