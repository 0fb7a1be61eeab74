"""`docker compose up` for real: the stack of docker-compose.yml plus the CI override
(tests/deploy/compose.ci.yml) under podman-compose, with the images of scripts/build_images.sh.

Through the gateway container: a user made with `distillery admin create-user` inside it uploads a
small data set, submits a tiny experiment, waits for `succeeded`, reads the results table and
downloads an artifact by its presigned link; then `compose down -v`.

Runs only from scripts/container_e2e.sh (DISTILLERY_CONTAINER_E2E=1), which builds the images
first; `bash scripts/test.sh` skips it. Prints how long each phase took.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest

from tests.support.datasets import wait_checked

from .manifests import COMPOSE_FILE, ROOT

pytestmark = [
    pytest.mark.container,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("DISTILLERY_CONTAINER_E2E") != "1",
        reason="builds and runs containers: run scripts/container_e2e.sh",
    ),
]

OVERRIDE = ROOT / "tests/deploy/compose.ci.yml"
PROJECT = "distillery-ci"
GATEWAY = "http://127.0.0.1:18000"
DEPENDENCIES = ("postgres", "redis", "minio")
PLATFORM = ("gateway", "reconciler", "worker", "profiler", "checker")
T = TypeVar("T")


def compose(*args: str, timeout_s: float = 300, check: bool = True) -> str:
    """`podman-compose -p distillery-ci -f docker-compose.yml -f compose.ci.yml ARGS`."""
    binary = shutil.which("podman-compose")
    assert binary, "podman-compose is not installed (pip install podman-compose)"
    argv = [binary, "-p", PROJECT, "-f", str(COMPOSE_FILE), "-f", str(OVERRIDE), *args]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: exit {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out.stdout


def wait_for(check: Callable[[], T | None], timeout_s: float, what: str) -> T:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result is not None:
                return result
        except (httpx.HTTPError, AssertionError) as e:
            last = e
        time.sleep(1)
    raise TimeoutError(f"{what}: not within {timeout_s:.0f}s (last: {last})")


def print_logs() -> None:
    for service in DEPENDENCIES + PLATFORM:
        print(f"----- logs of {service}")
        print(compose("logs", "--tail", "80", service, check=False)[-8000:])


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[dict[str, float]]:
    """The stack up, dependencies first (podman runs no health checks here, so the order that
    `depends_on: service_healthy` gives under Docker is kept by hand); down -v afterwards."""
    times: dict[str, float] = {}
    compose("down", "-v", timeout_s=180, check=False)
    start = time.monotonic()
    try:
        compose("up", "-d", "--no-deps", *DEPENDENCIES)
        compose("run", "--rm", "--no-deps", "createbuckets")  # distillery admin init
        compose("up", "-d", "--no-deps", *PLATFORM)
        times["up"] = time.monotonic() - start

        def ready() -> dict | None:
            r = httpx.get(f"{GATEWAY}/ready", timeout=5)
            return r.json() if r.status_code == 200 else None

        wait_for(ready, 240, "the gateway's /ready")
        times["ready"] = time.monotonic() - start
        yield times
    except BaseException:
        print_logs()
        raise
    else:
        if request.session.testsfailed:
            print_logs()
    finally:
        down = time.monotonic()
        compose("down", "-v", timeout_s=300, check=False)
        times["down"] = time.monotonic() - down
        print("container e2e phases (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))


def tiny_spec(dataset_id: str) -> dict[str, Any]:
    ref = {"format": "cityscapes", "dataset_id": dataset_id}
    train = {"epochs": 1, "batch_size": 2, "max_steps_per_epoch": 2}
    return {
        "name": "container-e2e",
        "data": {"train": [ref], "val": [ref], "image_size": [32, 64]},
        "teacher": {"model": {"depth": 2, "width": 4}, "train": train},
        "student": {"model": {"depth": 2, "width": 2}, "train": train},
        "profiling": {"input_size": [32, 64], "warmup": 1, "min_repeats": 3, "max_repeats": 3},
        "tracking": {"mode": "offline", "log_images": False, "log_feature_maps": False},
        "stages": ["teacher", "student", "distill", "profile"],
    }


def test_compose_stack_runs_an_experiment_end_to_end(stack, tmp_path):
    from distillery.data.synthetic import generate_synthetic

    start = time.monotonic()
    # A user, made inside the gateway container as the README says.
    out = compose("exec", "-T", "gateway", "distillery", "admin", "create-user", "ci")
    token = out.strip().splitlines()[-1]
    http = httpx.Client(base_url=GATEWAY, headers={"Authorization": f"Bearer {token}"}, timeout=60)

    root = tmp_path / "upload"
    generate_synthetic(root, "cityscapes", num_train=4, num_val=2, image_size=(32, 64), seed=0)
    archive = tmp_path / "cityscapes.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for p in sorted(root.iterdir()):
            if not p.name.startswith("."):
                tf.add(p, arcname=p.name)
    with open(archive, "rb") as f:
        r = http.post(
            "/datasets",
            data={"name": "synthetic", "format": "cityscapes"},
            files={"file": ("cityscapes.tar.gz", f, "application/gzip")},
        )
    # 202: accepted as `checking`; the compose stack's checker (cpu queue) ends it ready.
    assert r.status_code == 202, r.text
    dataset = wait_checked(http.get, r.json()["id"], timeout_s=300)
    assert dataset["status"] == "ready", dataset

    r = http.post("/experiments", json=tiny_spec(dataset["id"]))
    assert r.status_code == 201, r.text
    exp_id = r.json()["id"]

    def finished() -> dict | None:
        exp = http.get(f"/experiments/{exp_id}").json()
        return exp if exp["status"] in ("succeeded", "failed", "cancelled") else None

    exp = wait_for(finished, 900, f"experiment {exp_id}")
    stack["experiment"] = time.monotonic() - start
    errors = {s["name"]: s["error"] for s in exp["stages"] if s["error"]}
    assert exp["status"] == "succeeded", errors
    assert [s["status"] for s in exp["stages"]] == ["succeeded"] * 4

    # The results table names the models and their mIoU; an artifact downloads by its link.
    text = str(exp["results"])
    for word in ("teacher", "student", "miou"):
        assert word in text, word
    # (wandb runs are folders, size null: their link is no download, so a file is picked)
    files = [a for a in exp["artifacts"] if a["size"]]
    assert files, exp["artifacts"]
    models = [a for a in files if a["kind"] == "model"]
    artifact = (models or files)[0]
    body = httpx.get(artifact["url"], timeout=60)
    assert body.status_code == 200, body.text[:300]
    assert len(body.content) == artifact["size"] > 0
