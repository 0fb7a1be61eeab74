"""The gateway under load on loopback: a sweep of N concurrent clients, T seconds each, mixed
reads and submits.

    python benchmarks/gateway_load.py [--clients 1,10,50,100] [--duration 10] [--workers 2]
                                      [--mix submit=1]  # one kind of request: its own cost

Starts its own uvicorn (`--workers`, with `tests.support.devstack`; its log is printed if the
run fails), in a throwaway Postgres schema, with the Celery dispatcher sending to throwaway
Redis queues that are deleted afterwards. For each client count in the sweep (one gateway for
the whole sweep, levels run one after the other), each client loops over a weighted mix: POST
/experiments (20%), GET /experiments?limit=20 (40%), GET /experiments/{id} (30%), GET /queue
(10%; its default page of 50 entries). Prints, per level, requests/s and p50/p99 latency per
kind, then one line per level so the knee shows, with the gateway's CPU time per request (its
processes, from /proc: steadier than latency on a shared machine). The number of 5xx answers
must be zero and every submitted experiment must have put exactly one message on the GPU queue
(the exit status is 1 otherwise). Each client is one keep-alive HTTP/1.1 connection driven by a
minimal asyncio client (`KeepAlive`), so the load generator's own CPU stays small next to the
gateway's. Traffic goes to 127.0.0.1 only; the run is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

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
#: Seconds one answer may take before the request counts as an error (TimeoutError).
TIMEOUT_S = 60.0
MIX = [("submit", 0.2), ("list", 0.4), ("detail", 0.3), ("queue", 0.1)]


def request_mix(text: str) -> list[tuple[str, float]]:
    """`"submit=1"` or `"list=0.5,detail=0.5"` -> [(kind, weight), ...] in `MIX`'s order."""
    known = dict(MIX)
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, weight = part.partition("=")
        if kind not in known:
            raise argparse.ArgumentTypeError(f"--mix: unknown kind {kind!r} (one of {list(known)})")
        try:
            weights[kind] = float(weight or 1)
        except ValueError:
            msg = f"--mix: {part!r}: the weight is not a number"
            raise argparse.ArgumentTypeError(msg) from None
        if not weights[kind] >= 0:
            raise argparse.ArgumentTypeError(f"--mix: {part!r}: a weight must be >= 0")
    if not any(weights.values()):
        raise argparse.ArgumentTypeError(f"--mix: {text!r} gives no kind a positive weight")
    return [(kind, weights[kind]) for kind, _ in MIX if kind in weights]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


class HttpError(Exception):
    """No (complete) answer on the connection."""


class KeepAlive:
    """One HTTP/1.1 keep-alive connection on loopback, one request at a time.

    A deliberately small client: with 50 concurrent clients httpx's pool cost the load generator
    about 5 ms of CPU per request, as much as the gateway, on the same 2 cores. This one costs
    tens of microseconds, so the table measures the gateway.
    """

    def __init__(self, url: str, token: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.auth = f"Authorization: Bearer {token}\r\n".encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        """(status, body) of one request; reconnects if the server closed the connection."""
        payload = json.dumps(body).encode() if body is not None else b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Content-Length: {len(payload)}\r\n"
            + ("Content-Type: application/json\r\n" if body is not None else "")
        ).encode()
        for attempt in (0, 1):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            try:
                self.writer.write(head + self.auth + b"\r\n" + payload)
                return await asyncio.wait_for(self._response(), TIMEOUT_S)
            except (ConnectionError, asyncio.IncompleteReadError, HttpError):
                self.close()
                if attempt:
                    raise HttpError(f"{method} {path}: the connection closed") from None
        raise AssertionError("unreachable")

    async def _response(self) -> tuple[int, bytes]:
        assert self.reader is not None
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding") == "chunked":
            chunks = []
            while size := int((await self.reader.readuntil(b"\r\n")).strip(), 16):
                chunks.append(await self.reader.readexactly(size + 2))
            await self.reader.readuntil(b"\r\n")
            content = b"".join(c[:-2] for c in chunks)
        else:
            content = await self.reader.readexactly(int(headers.get("content-length", 0)))
        if headers.get("connection") == "close":
            self.close()
        return status, content

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def client_loop(
    http: KeepAlive,
    deadline: float,
    ids: list[str],
    results: dict,
    rng: random.Random,
    mix: list[tuple[str, float]],
) -> None:
    kinds, weights = zip(*mix, strict=True)
    n = 0
    while time.monotonic() < deadline:
        kind = rng.choices(kinds, weights)[0]
        if kind == "detail" and not ids:
            kind = "list"
        t0 = time.perf_counter()
        try:
            if kind == "submit":
                n += 1
                status, body = await http.request(
                    "POST", "/experiments", {**SPEC, "name": f"load-{n}"}
                )
                if status == 201:
                    ids.append(json.loads(body)["id"])
            elif kind == "list":
                status, _ = await http.request("GET", "/experiments?limit=20")
            elif kind == "detail":
                status, _ = await http.request("GET", f"/experiments/{rng.choice(ids)}")
            else:
                status, _ = await http.request("GET", "/queue")
        except (OSError, HttpError, ValueError) as e:
            status = f"error: {type(e).__name__}: {e}"
        results[kind].append((time.perf_counter() - t0, status))


async def run_load(
    url: str,
    token: str,
    clients: int,
    duration: float,
    seed: int,
    mix: list[tuple[str, float]] = MIX,
    ids: list[str] | None = None,
) -> dict:
    """`clients` closed loops, each on its own keep-alive connection, for `duration` s; `ids`
    collects the experiments submitted (details read from them)."""
    results: dict[str, list] = defaultdict(list)
    ids = [] if ids is None else ids
    connections = [KeepAlive(url, token) for _ in range(clients)]
    deadline = time.monotonic() + duration
    try:
        await asyncio.gather(
            *(
                client_loop(http, deadline, ids, results, random.Random(seed + i), mix)
                for i, http in enumerate(connections)
            )
        )
    finally:
        for http in connections:
            http.close()
    return results


def report(results: dict, elapsed: float, queued: int, submitted: int) -> dict:
    """Print the per-kind table of one level; returns its `all` row and whether it passed."""
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
    print(f"submitted {submitted} experiments; {queued} messages on the GPU queue")
    ok = all_5xx == 0 and all_err == 0 and queued == submitted
    _, n, rps, p50, p99, _, n5, ne = rows[-1]
    return {
        "requests": n,
        "rps": rps,
        "p50": p50,
        "p99": p99,
        "5xx": n5,
        "errors": ne,
        "submitted": submitted,
        "queued": queued,
        "ok": ok,
    }


def sweep_table(workers: int, levels: list[tuple[int, dict]]) -> None:
    """One line per client count: where throughput stops growing and latency starts to."""
    head = (
        f"{'clients':>7} {'workers':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'5xx':>5} "
        f"{'errors':>6} {'submitted':>9} {'queued':>6} {'CPU ms/req':>10}"
    )
    print(f"\n{head}\n{'-' * len(head)}")
    for clients, r in levels:
        print(
            f"{clients:>7} {workers:>7} {r['rps']:>8.1f} {r['p50']:>8.1f} {r['p99']:>8.1f} "
            f"{r['5xx']:>5} {r['errors']:>6} {r['submitted']:>9} {r['queued']:>6} "
            f"{r['cpu_ms']:>10.2f}"
        )


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` and its children (uvicorn's workers), from
    /proc (0.0 where it is not readable): CPU per request is steadier than latency on a shared
    machine."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue
    return total


def worker_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds of each child (uvicorn worker) of `pid`: how evenly the workers share the
    load (they share one listening socket; see `UV_TCP_SINGLE_ACCEPT` in the gateway)."""
    try:
        children = [
            int(c)
            for task in Path(f"/proc/{pid}/task").iterdir()
            for c in (task / "children").read_text().split()
        ]
    except (OSError, ValueError):
        return {}
    return {c: tree_cpu_s(c) for c in children}


def shares(before: dict[int, float], after: dict[int, float], workers: int) -> str:
    """Each worker's share of the CPU the workers used between two `worker_cpu_s` readings
    (the `workers` busiest children: uvicorn also starts a multiprocessing helper)."""
    used = sorted((after[p] - before.get(p, 0.0) for p in after), reverse=True)[:workers]
    total = sum(used)
    return " / ".join(f"{100 * u / total:.0f}%" for u in used) if total > 0 else "-"


def client_counts(text: str) -> list[int]:
    """`"1,10,50"` -> [1, 10, 50]; each between 1 and 500."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--clients: {text!r} is not a comma-separated list of integers"
        ) from None
    if not counts or any(not 1 <= c <= 500 for c in counts):
        raise argparse.ArgumentTypeError(f"--clients: {text!r}: each count must be in 1..500")
    return counts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--clients",
        type=client_counts,
        default=[1, 10, 50, 100],
        help="concurrent clients, one level per comma-separated count (default 1,10,50,100)",
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load per level")
    p.add_argument(
        "--warmup",
        type=float,
        default=3.0,
        help="seconds of uncounted load first (imports, first statements, pooled connections)",
    )
    p.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    p.add_argument(
        "--mix",
        type=request_mix,
        default=MIX,
        help="kinds of request and their weights, e.g. `list=1` (default "
        + ",".join(f"{k}={w}" for k, w in MIX)
        + "); the warm-up always runs the default mix, so details have experiments to read",
    )
    p.add_argument(
        "--gateway-concurrency",
        type=int,
        default=None,
        help="DISTILLERY_GATEWAY_CONCURRENCY of each worker (default: the setting's default)",
    )
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
    if args.duration * len(args.clients) + args.warmup > 300:
        p.error("keep it bounded: at most 300 s of load in all")

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
        allowed_data_roots=["/data"],
        max_active_experiments=0,  # measure the gateway, not the per-user caps
        max_submissions_per_minute=0,
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
        overrides = {}
        if args.gateway_concurrency is not None:
            overrides["gateway_concurrency"] = args.gateway_concurrency
        try:
            gateway = devstack.start_gateway(
                devstack.process_env(settings, **overrides),
                Path(tmp) / "gateway.log",
                extra_args=[
                    "--workers",
                    str(args.workers),
                    "--no-access-log",
                    "--timeout-keep-alive",
                    "30",
                    "--log-level",
                    "info",  # each worker logs its startup (no access log)
                ],
            )
            stack.enter_context(gateway)
            # /health answers once one worker is up; on a loaded machine the others take longer.
            devstack.wait_until(
                lambda: gateway.log().count("Application startup complete") >= args.workers,
                120,
                f"{args.workers} uvicorn workers started",
            )
        except (TimeoutError, devstack.ProcessExited) as e:
            raise SystemExit(f"the gateway did not start: {e}") from None
        url = gateway.url
        print(
            f"gateway: uvicorn --workers {args.workers} on {url}; clients "
            f"{','.join(map(str, args.clients))}, {args.duration:.0f} s each; "
            f"CPUs: {os.cpu_count()}"
        )
        ids: list[str] = []
        if args.warmup > 0:
            asyncio.run(run_load(url, token, 8, args.warmup, args.seed + 1000, MIX, ids))
        levels = []
        for clients in args.clients:
            print(f"\n== {clients} clients, {args.duration:.0f} s ==")
            before, cpu0, client0 = (
                r.llen(gpu_q),
                tree_cpu_s(gateway.popen.pid),
                time.process_time(),
            )
            split0 = worker_cpu_s(gateway.popen.pid)
            t0 = time.monotonic()
            results = asyncio.run(
                run_load(url, token, clients, args.duration, args.seed, args.mix, ids)
            )
            elapsed = time.monotonic() - t0
            cpu = tree_cpu_s(gateway.popen.pid) - cpu0
            client_cpu = time.process_time() - client0
            submitted = sum(1 for _, s in results.get("submit", []) if s == 201)
            level = report(results, elapsed, r.llen(gpu_q) - before, submitted)
            level["cpu_ms"] = 1e3 * cpu / max(level["requests"], 1)
            level["client_cpu_ms"] = 1e3 * client_cpu / max(level["requests"], 1)
            print(
                f"CPU per request: gateway {level['cpu_ms']:.2f} ms, "
                f"load generator {level['client_cpu_ms']:.2f} ms; the workers' shares of it: "
                f"{shares(split0, worker_cpu_s(gateway.popen.pid), args.workers)}"
            )
            levels.append((clients, level))
        sweep_table(args.workers, levels)
        ok = all(level["ok"] for _, level in levels)
        verdict = "OK: no 5xx, every submit queued" if ok else "FAILED: 5xx/errors or lost messages"
        print(f"\n{verdict}")
        if not ok and gateway.log().strip():
            print(f"\n--- gateway log (end) ---\n{gateway.log_tail()}")
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
