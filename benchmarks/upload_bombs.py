"""Hostile uploads against a real gateway: the answer, the time and the gateway's peak memory.

    python benchmarks/upload_bombs.py

Starts its own platform (`tests.support.platform`: a throwaway Postgres schema, an S3 server with
fresh buckets) and the gateway under uvicorn, uploads each hostile archive of
`tests/support/bombs.py` and prints, per input: packed size, HTTP status, the start of the error
message, seconds, and the peak resident memory of the gateway process tree while it answered
(sampled every 10 ms).
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
from tests.support.platform import local_platform  # noqa: E402


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


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
        proc = psutil.Process(gw.popen.pid)
        print(f"gateway RSS at rest: {tree_rss(proc) / 2**20:.0f} MB\n")
        head = f"{'input':<30} {'packed':>10} {'answer':>6} {'s':>6} {'peak MB':>8}  message"
        print(head)
        print("-" * (len(head) + 30))
        for what, filename, data in cases():
            peak, stop = [tree_rss(proc)], threading.Event()

            def sample(peak: list[int] = peak, stop: threading.Event = stop) -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], tree_rss(proc))
                    time.sleep(0.01)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            t0 = time.perf_counter()
            r = httpx.post(
                f"{gw.url}/datasets",
                headers={"Authorization": f"Bearer {token}"},
                data={"name": "bench", "format": "cityscapes"},
                files={"file": (filename, data, "application/octet-stream")},
                timeout=120,
            )
            elapsed = time.perf_counter() - t0
            stop.set()
            sampler.join()
            detail = r.json().get("detail")
            msg = detail[0]["msg"] if isinstance(detail, list) else str(detail)
            print(
                f"{what:<30} {len(data):>10} {r.status_code:>6} {elapsed:>6.2f} "
                f"{peak[0] / 2**20:>8.0f}  {msg[:90]}"
            )
        left = make_storage(settings, settings.datasets_bucket).list("")
        print(f"\nobjects left in the datasets bucket: {len(left)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
