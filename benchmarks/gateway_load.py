"""The gateway under load on loopback: N concurrent clients for T seconds, mixed reads and submits.

    python benchmarks/gateway_load.py [--clients 50] [--duration 20] [--workers 2]

Starts its own uvicorn (`--workers`, with `tests.support.devstack`; its log is printed if the run
fails), in a throwaway Postgres schema, with the Celery dispatcher
sending to throwaway Redis queues that are deleted afterwards. Each client loops over a weighted
mix: POST /experiments (20%), GET /experiments?limit=20 (40%), GET /experiments/{id} (30%),
GET /queue (10%). Prints requests/s and p50/p99 latency per kind, and the number of 5xx answers
(must be zero; the exit status is 1 otherwise). Every submitted experiment must also have put
exactly one message on the GPU queue. Traffic goes to 127.0.0.1 only; the run is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distillery.db import make_engine, make_session_factory  # noqa: E402
from distillery.db.auth import create_user  # noqa: E402
from distillery.settings import Settings  # noqa: E402
from tests.support import devstack  # noqa: E402

SPEC = {
    "name": "load",
    "data": {
        "train": [{"format": "cityscapes", "root": "/data/cityscapes"}],
        "val": [{"format": "cityscapes", "root": "/data/cityscapes"}],
    },
    "teacher": {"model": {"width": 16}},
    "student": {"model": {"width": 4}},
    "tracking": {"mode": "disabled"},
}
MIX = [("submit", 0.2), ("list", 0.4), ("detail", 0.3), ("queue", 0.1)]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


async def client_loop(
    http: httpx.AsyncClient, deadline: float, ids: list[str], results: dict, rng: random.Random
) -> None:
    kinds, weights = zip(*MIX, strict=True)
    n = 0
    while time.monotonic() < deadline:
        kind = rng.choices(kinds, weights)[0]
        if kind == "detail" and not ids:
            kind = "list"
        t0 = time.perf_counter()
        try:
            if kind == "submit":
                n += 1
                r = await http.post("/experiments", json={**SPEC, "name": f"load-{n}"})
                if r.status_code == 201:
                    ids.append(r.json()["id"])
            elif kind == "list":
                r = await http.get("/experiments", params={"limit": 20})
            elif kind == "detail":
                r = await http.get(f"/experiments/{rng.choice(ids)}")
            else:
                r = await http.get("/queue")
            status = r.status_code
        except httpx.HTTPError as e:
            status = f"error: {type(e).__name__}: {e}"
        results[kind].append((time.perf_counter() - t0, status))


async def run_load(url: str, token: str, clients: int, duration: float, seed: int) -> dict:
    results: dict[str, list] = defaultdict(list)
    ids: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60, limits=limits
    ) as http:
        deadline = time.monotonic() + duration
        await asyncio.gather(
            *(
                client_loop(http, deadline, ids, results, random.Random(seed + i))
                for i in range(clients)
            )
        )
    return results


def report(results: dict, elapsed: float, queued: int, submitted: int) -> int:
    rows = []
    all_lat, all_5xx, all_err, total = [], 0, 0, 0
    for kind, _ in MIX:
        rs = results.get(kind, [])
        lat = [t for t, s in rs if isinstance(s, int)]
        n5xx = sum(1 for _, s in rs if isinstance(s, int) and s >= 500)
        n4xx = sum(1 for _, s in rs if isinstance(s, int) and 400 <= s < 500)
        nerr = sum(1 for _, s in rs if not isinstance(s, int))
        rows.append(
            (
                kind,
                len(rs),
                len(rs) / elapsed,
                percentile(lat, 50) * 1e3,
                percentile(lat, 99) * 1e3,
                n4xx,
                n5xx,
                nerr,
            )
        )
        all_lat += lat
        all_5xx += n5xx
        all_err += nerr
        total += len(rs)
    rows.append(
        (
            "all",
            total,
            total / elapsed,
            percentile(all_lat, 50) * 1e3,
            percentile(all_lat, 99) * 1e3,
            sum(r[5] for r in rows),
            all_5xx,
            all_err,
        )
    )
    head = (
        f"{'request':<8} {'count':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'4xx':>5} {'5xx':>5} {'errors':>6}"
    )
    print(head)
    print("-" * len(head))
    for kind, n, rps, p50, p99, n4, n5, ne in rows:
        print(f"{kind:<8} {n:>7} {rps:>8.1f} {p50:>8.1f} {p99:>8.1f} {n4:>5} {n5:>5} {ne:>6}")
    errors = defaultdict(int)
    for rs in results.values():
        for _, s in rs:
            if not isinstance(s, int) or s >= 500:
                errors[str(s)] += 1
    for what, n in sorted(errors.items()):
        print(f"  {n} x {what}")
    print(f"\nsubmitted {submitted} experiments; {queued} messages on the GPU queue")
    ok = all_5xx == 0 and all_err == 0 and queued == submitted
    print("OK: no 5xx" if ok else "FAILED: 5xx/errors or lost messages")
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    p.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    p.add_argument(
        "--db-url",
        default=os.environ.get(
            "DISTILLERY_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
    )
    p.add_argument(
        "--redis-url",
        default=os.environ.get("DISTILLERY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.clients > 500 or args.duration > 300:
        p.error("keep it bounded: at most 500 clients and 300 s")

    tag = uuid.uuid4().hex[:10]
    schema, gpu_q, prof_q = f"bench_{tag}", f"bench-gpu-{tag}", f"bench-profiler-{tag}"
    settings = Settings(
        _env_file=None,
        database_url=args.db_url,
        database_schema=schema,
        broker_url=args.redis_url,
        gpu_queue=gpu_q,
        profiler_queue=prof_q,
        migrate_on_start=False,
    )
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        stack.enter_context(devstack.scratch_schema(args.db_url, schema))
        engine = make_engine(args.db_url, schema=schema)
        stack.callback(engine.dispose)
        with make_session_factory(engine)() as s:
            _, token = create_user(s, "bench")
        r = redis.Redis.from_url(args.redis_url)
        stack.callback(r.close)
        for q in (gpu_q, prof_q):
            stack.callback(devstack.delete_queue_keys, r, q)
        try:
            gateway = devstack.start_gateway(
                devstack.process_env(settings),
                Path(tmp) / "gateway.log",
                extra_args=[
                    "--workers",
                    str(args.workers),
                    "--no-access-log",
                    "--timeout-keep-alive",
                    "30",
                ],
            )
        except (TimeoutError, devstack.ProcessExited) as e:
            raise SystemExit(f"the gateway did not start: {e}") from None
        stack.enter_context(gateway)
        url = gateway.url
        print(
            f"gateway: uvicorn --workers {args.workers} on {url}; {args.clients} clients for "
            f"{args.duration:.0f} s; CPUs: {os.cpu_count()}\n"
        )
        t0 = time.monotonic()
        results = asyncio.run(run_load(url, token, args.clients, args.duration, args.seed))
        elapsed = time.monotonic() - t0
        submitted = sum(1 for _, s in results.get("submit", []) if s == 201)
        queued = r.llen(gpu_q)
        status = report(results, elapsed, queued, submitted)
        if status != 0 and gateway.log().strip():
            print(f"\n--- gateway log (end) ---\n{gateway.log_tail()}")
        return status


if __name__ == "__main__":
    raise SystemExit(main())
