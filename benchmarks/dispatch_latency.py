"""Dispatch latency: from `POST /experiments` to the first stage starting on an idle worker.

Starts its own platform on this machine (`tests.support.platform`: a fresh Postgres schema,
unique Redis queues, a SeaweedFS S3 server with fresh buckets), the gateway under uvicorn and one
GPU-queue Celery worker. Then, `--repeats` times:
wait until the worker is idle, submit a one-stage tiny experiment over HTTP and read the stage's
`started_at` (set by the worker when it claims the stage) from Postgres.

    python benchmarks/dispatch_latency.py [--repeats 5] [--settle 5]

Postgres and Redis: DISTILLERY_TEST_DATABASE_URL (default postgresql+psycopg://postgres@
127.0.0.1:5432/test) and DISTILLERY_TEST_REDIS_URL (default redis://127.0.0.1:6379/0).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distillery.db import Experiment, Stage  # noqa: E402
from tests.support import devstack  # noqa: E402
from tests.support.platform import local_platform  # noqa: E402


def tiny_spec(name: str, data_root: Path) -> dict:
    ref = {"format": "cityscapes", "root": str(data_root)}
    model = {"depth": 2, "width": 4}
    train = {"epochs": 1, "batch_size": 2, "max_steps_per_epoch": 1}
    return {
        "name": name,
        "data": {
            "train": [ref],
            "val": [ref],
            "image_size": [32, 64],
            "synthetic": {"num_train": 4, "num_val": 2, "image_size": [32, 64]},
        },
        "teacher": {"model": model, "train": train},
        "tracking": {"mode": "disabled"},
        "stages": ["teacher"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--settle", type=float, default=10.0, help="seconds the worker idles before each submission"
    )
    args = parser.parse_args(argv)

    with local_platform("dispatch") as p:
        sessions, settings, tmp, stack, env = p.sessions, p.settings, p.tmp, p.stack, p.env
        tag = settings.gpu_queue.removeprefix("gpu-")
        from distillery.db.auth import create_user

        with sessions() as s:
            _user, token = create_user(s, f"bench-{tag}")
        url = stack.enter_context(devstack.start_gateway(env, tmp / "gateway.log")).url
        worker_log = tmp / "worker.log"
        stack.enter_context(
            devstack.start_worker(
                env, settings.gpu_queue, 1, log_path=worker_log, node=f"bench-{tag}@%h"
            )
        )

        client = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        rows = []
        for i in range(args.repeats):
            time.sleep(args.settle)  # the worker's fresh child process is up and idle
            t0 = datetime.now(UTC)
            r = client.post("/experiments", json=tiny_spec(f"bench-{i}", tmp / "data"))
            r.raise_for_status()
            t_post = datetime.now(UTC)
            exp_id = r.json()["id"]

            def started(exp_id: str = exp_id) -> Stage | None:
                with sessions() as s:
                    st = s.query(Stage).filter_by(experiment_id=exp_id).one()
                    return st if st.started_at is not None else None

            stage = devstack.wait_until(
                started, 120, f"stage of experiment {i} to start", interval_s=0.05
            )
            rows.append(
                {
                    "post_s": (t_post - t0).total_seconds(),
                    "queued_s": (stage.enqueued_at - t0).total_seconds(),
                    "start_s": (stage.started_at - t0).total_seconds(),
                }
            )
            print(
                f"run {i + 1}: POST {rows[-1]['post_s'] * 1e3:.0f} ms, "
                f"started after {rows[-1]['start_s']:.2f} s",
                flush=True,
            )

            def finished(exp_id: str = exp_id) -> bool:
                with sessions() as s:
                    return s.get(Experiment, exp_id).status.finished

            devstack.wait_until(finished, 300, f"experiment {i} to finish")
            with sessions() as s:
                status = s.get(Experiment, exp_id).status.value
            if status != "succeeded":
                print(f"  (experiment {i} {status}; see {worker_log})")

        print()
        print(f"dispatch latency over {len(rows)} runs (idle worker, {args.settle:.0f} s settle)")
        print(f"| {'measure':<36} | {'min':>7} | {'median':>7} | {'max':>7} |")
        print(f"|{'-' * 38}|{'-' * 9}|{'-' * 9}|{'-' * 9}|")
        for key, label in (
            ("post_s", "POST /experiments answered"),
            ("queued_s", "first stage enqueued (enqueued_at)"),
            ("start_s", "first stage started (started_at)"),
        ):
            vals = [r[key] for r in rows]
            print(
                f"| {label:<36} | {min(vals):6.3f}s | {statistics.median(vals):6.3f}s | "
                f"{max(vals):6.3f}s |"
            )


if __name__ == "__main__":
    main()
