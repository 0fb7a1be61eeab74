"""A sweep on the shared queue against the same sweep run by `distillery run`, on this machine.

Starts its own platform (`tests.support.platform`: a fresh Postgres schema, unique Redis queues,
a SeaweedFS S3 server), the gateway under uvicorn, one GPU-queue and one profiler-queue Celery
worker (concurrency 1 each). Submits a tiny sweep (`--configs` temperatures x `--seeds` student
seeds) over HTTP and waits for the parent to end; then runs the same spec locally
(`distillery.sweep_local.run_sweep`). Prints the submission time (against a plain experiment's),
the stages trained (shared vs what the children would train alone), and the wall times.

    python benchmarks/sweep_queue.py [--configs 2] [--seeds 3] [--repeats 3]

Postgres and Redis: DISTILLERY_TEST_DATABASE_URL (default postgresql+psycopg://postgres@
127.0.0.1:5432/test) and DISTILLERY_TEST_REDIS_URL (default redis://127.0.0.1:6379/0).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distillery.db import Experiment, Stage  # noqa: E402
from distillery.spec import ExperimentSpec  # noqa: E402
from distillery.stages.lifecycle import aware  # noqa: E402
from tests.support import devstack  # noqa: E402
from tests.support.platform import local_platform  # noqa: E402


def tiny_spec(name: str, data_root: Path, configs: int, seeds: int) -> dict:
    ref = {"format": "cityscapes", "root": str(data_root)}
    train = {"epochs": 1, "batch_size": 2, "max_steps_per_epoch": 4, "num_threads": 1}
    return {
        "name": name,
        "data": {
            "train": [ref],
            "val": [ref],
            "image_size": [32, 64],
            "synthetic": {"num_train": 8, "num_val": 4, "image_size": [32, 64]},
        },
        "teacher": {"model": {"depth": 2, "width": 4}, "train": train},
        "student": {"model": {"depth": 2, "width": 2}, "train": train},
        "tracking": {"mode": "disabled"},
        "stages": ["teacher", "student", "distill"],
        "sweep": {
            "seeds": list(range(seeds)),
            "grid": {"distillation.losses.1.temperature": [1 + 3 * i for i in range(configs)]},
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="submissions timed per kind")
    args = parser.parse_args(argv)

    with local_platform("sweepq") as p:
        sessions, settings, tmp, stack, env = p.sessions, p.settings, p.tmp, p.stack, p.env
        tag = settings.gpu_queue.removeprefix("gpu-")
        from distillery.db.auth import create_user

        with sessions() as s:
            _user, token = create_user(s, f"bench-{tag}")
        url = stack.enter_context(devstack.start_gateway(env, tmp / "gateway.log")).url
        client = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )

        # submission time, before any worker runs (they are cancelled and deleted after)
        spec = tiny_spec("bench-sweep", tmp / "data", args.configs, args.seeds)
        plain = {k: v for k, v in spec.items() if k != "sweep"}
        post: dict[str, list[float]] = {"plain": [], "sweep": []}
        for i in range(args.repeats):
            for kind, body in (("plain", plain), ("sweep", spec)):
                t0 = time.perf_counter()
                r = client.post("/experiments", json={**body, "name": f"{kind}-{i}"})
                post[kind].append(time.perf_counter() - t0)
                r.raise_for_status()
                exp_id = r.json()["id"]
                client.post(f"/experiments/{exp_id}/cancel").raise_for_status()
                client.delete(f"/experiments/{exp_id}").raise_for_status()
        members = len(r.json()["sweep"]["members"])

        for kind, queue in (("gpu", settings.gpu_queue), ("profiler", settings.profiler_queue)):
            app = "services.worker.app" if kind == "gpu" else "services.profiler.app"
            stack.enter_context(
                devstack.start_worker(
                    env, queue, 1, log_path=tmp / f"{kind}.log", app=app, node=f"{kind}-{tag}@%h"
                )
            )
        time.sleep(5)  # the workers' pool processes are up
        t0 = time.perf_counter()
        r = client.post("/experiments", json=spec)
        r.raise_for_status()
        parent = r.json()
        counts = parent["sweep"]["plan"]["stage_counts"]

        def ended() -> dict | None:
            body = client.get(f"/experiments/{parent['id']}").json()
            return body if body["status"] in ("succeeded", "failed", "partial") else None

        final = devstack.wait_until(ended, 1800, "the sweep", interval_s=0.5)
        queue_wall = time.perf_counter() - t0
        with sessions() as s:
            ids = [m["id"] for m in final["sweep"]["members"]] + [parent["id"]]
            stages = s.query(Stage).filter(Stage.experiment_id.in_(ids)).all()
            busy = sum(
                (aware(st.finished_at) - aware(st.started_at)).total_seconds()
                for st in stages
                if st.started_at and st.finished_at
            )
            # the gpu worker's idle time between one stage's end and the next one's claim
            runs = sorted(
                (aware(st.started_at), aware(st.finished_at))
                for st in stages
                if st.queue == settings.gpu_queue and st.started_at and st.finished_at
            )
            gaps = [(b[0] - a[1]).total_seconds() for a, b in zip(runs, runs[1:], strict=False)]
            trained = {k: sum(st.name == k for st in stages) for k in ("teacher", "student")}
            trained["distill"] = sum(st.name == "distill" for st in stages)
            status = s.get(Experiment, parent["id"]).status.value

        from distillery.sweep_local import run_sweep

        t0 = time.perf_counter()  # the workers are idle now
        local = run_sweep(ExperimentSpec.model_validate(spec), tmp / "local", analyses=True)
        local_wall = time.perf_counter() - t0

    def ms(v: list[float]) -> str:
        return f"{statistics.median(v) * 1e3:.0f} ms (min {min(v) * 1e3:.0f})"

    n = args.configs * args.seeds
    head = f"sweep: {args.configs} configurations x {args.seeds} seeds = {n} children, "
    print(f"\n{head}{members} member experiments; ended {status} (local: {local['status']})")
    rows = [
        (f"POST /experiments, a plain experiment (median of {args.repeats})", ms(post["plain"])),
        (f"POST /experiments, the sweep (median of {args.repeats})", ms(post["sweep"])),
    ]
    for kind in ("teacher", "student", "distill"):
        planned, unshared = counts[kind]
        rows.append(
            (f"{kind} stages trained (planned / without sharing)", f"{trained[kind]} "
             f"({planned} / {unshared})")
        )  # fmt: skip
    rows += [
        ("queue: POST to parent ended (1 gpu + 1 profiler worker)", f"{queue_wall:.1f} s"),
        ("queue: the stages' own time (claim to end, summed)", f"{busy:.1f} s"),
        (
            "queue: gpu worker idle between stages (median, max)",
            f"{statistics.median(gaps):.1f} s, {max(gaps):.1f} s",
        ),
        ("local `distillery run` of the same sweep", f"{local_wall:.1f} s"),
    ]
    print("| measure | value |\n|---|---|")
    for label, value in rows:
        print(f"| {label} | {value} |")


if __name__ == "__main__":
    main()
