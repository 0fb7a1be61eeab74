"""Hostile uploads against a real gateway: the answer, the time and the gateway's peak memory.

    python benchmarks/upload_bombs.py

Starts its own S3 server (`weed mini`), a throwaway Postgres schema and the gateway under uvicorn
(`tests/support/devstack.py`), uploads each hostile archive of `tests/support/bombs.py` and
prints, per input: packed size, HTTP status, the start of the error message, seconds, and the
peak resident memory of the gateway process tree while it answered (sampled every 10 ms).
Loopback only, bounded (a few seconds per input).
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack, suppress
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distillery.db import make_engine, make_session_factory  # noqa: E402
from distillery.db.auth import create_user  # noqa: E402
from distillery.settings import Settings  # noqa: E402
from tests.support import bombs, devstack  # noqa: E402


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
    db_url = os.environ.get(
        "DISTILLERY_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    tag = uuid.uuid4().hex[:10]
    with tempfile.TemporaryDirectory() as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        schema = stack.enter_context(devstack.scratch_schema(db_url, f"bench_{tag}"))
        s3 = stack.enter_context(devstack.start_s3_server(tmp / "weed", access_key="bench"))
        from minio import Minio

        minio = Minio(s3.endpoint, s3.access_key, s3.secret_key, secure=False)
        for bucket in (f"datasets-{tag}", f"artifacts-{tag}"):
            minio.make_bucket(bucket)
        settings = Settings(
            _env_file=None,
            database_url=db_url,
            database_schema=schema,
            s3_endpoint=s3.endpoint,
            s3_access_key=s3.access_key,
            s3_secret_key=s3.secret_key,
            datasets_bucket=f"datasets-{tag}",
            artifacts_bucket=f"artifacts-{tag}",
            cache_dir=tmp / "cache",
            work_dir=tmp / "work",
            migrate_on_start=False,
        )
        engine = make_engine(db_url, schema=schema)
        stack.callback(engine.dispose)
        with make_session_factory(engine)() as s:
            _, token = create_user(s, "bench")
        gw = stack.enter_context(
            devstack.start_gateway(devstack.process_env(settings), tmp / "gateway.log")
        )
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
        left = minio.list_objects(f"datasets-{tag}", recursive=True)
        print(f"\nobjects left in the datasets bucket: {len(list(left))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
