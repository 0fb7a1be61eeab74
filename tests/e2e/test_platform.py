"""The platform end to end, with real processes: the gateway under uvicorn, a `gpu`, a
`profiler` and a `cpu` (dataset checker) Celery worker and the reconciler, against real
Postgres, Redis and an S3 server.

A user uploads a generated data set over HTTP, submits tiny specs and watches them pass through
their stages; two users submitting at once are served in queue order by the single GPU worker;
a cancel stops a running stage and keeps its checkpoint.
"""

from __future__ import annotations

import tarfile
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from distillery.data.synthetic import generate_synthetic
from distillery.s3 import make_storage
from tests.support.datasets import wait_checked

pytestmark = [pytest.mark.slow, pytest.mark.services]

FINISHED = {"succeeded", "failed", "cancelled"}


class Client:
    """One user of the gateway."""

    def __init__(self, url: str, token: str) -> None:
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )

    def __call__(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        assert response.status_code < 300, (
            f"{method} {path}: {response.status_code} {response.text}"
        )
        return response.json() if response.content else None


@pytest.fixture
def platform(gateway_url, make_user, start_worker, start_checker, start_reconciler, tmp_path):
    """The gateway plus one gpu worker, one profiler worker, one dataset checker and the
    reconciler; users alice and bob; a synthetic Cityscapes-layout data set uploaded through
    POST /datasets (202, then checked on the cpu queue)."""
    start_worker("gpu")
    start_worker("profiler")
    start_checker()
    start_reconciler(interval_s=2, stale_after_s=60)
    alice = Client(gateway_url, make_user("alice"))
    bob = Client(gateway_url, make_user("bob"))
    root = tmp_path / "upload"
    generate_synthetic(root, "cityscapes", num_train=8, num_val=4, image_size=(32, 64), seed=0)
    archive = tmp_path / "cityscapes.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for p in sorted(root.iterdir()):
            if not p.name.startswith("."):
                tf.add(p, arcname=p.name)
    with open(archive, "rb") as f:
        dataset = alice(
            "POST",
            "/datasets",
            data={"name": "synthetic", "format": "cityscapes"},
            files={"file": ("cityscapes.tar.gz", f, "application/gzip")},
        )
    assert dataset["status"] == "checking", dataset
    dataset = wait_checked(alice.http.get, dataset["id"])
    assert dataset["status"] == "ready", dataset
    return alice, bob, dataset["id"]


def tiny_spec(
    name: str,
    dataset_id: str,
    *,
    teacher_epochs: int = 2,
    stages: tuple[str, ...] = ("teacher", "student", "distill", "profile"),
) -> dict:
    ref = {"format": "cityscapes", "dataset_id": dataset_id}

    def train(epochs: int) -> dict:
        return {"epochs": epochs, "batch_size": 2, "max_steps_per_epoch": 2}

    return {
        "name": name,
        "data": {"train": [ref], "val": [ref], "image_size": [32, 64]},
        "teacher": {"model": {"depth": 2, "width": 4}, "train": train(teacher_epochs)},
        "student": {"model": {"depth": 2, "width": 2}, "train": train(1)},
        "profiling": {"input_size": [32, 64], "warmup": 1, "min_repeats": 3, "max_repeats": 5},
        "tracking": {"mode": "offline", "log_images": False, "log_feature_maps": False},
        "stages": list(stages),
    }


def watch(client: Client, exp_id: str, poll, timeout_s: float, seen: dict[str, set[str]]) -> dict:
    """Poll the experiment until it finishes, noting every status each stage was seen in."""

    def finished() -> dict | None:
        exp = client("GET", f"/experiments/{exp_id}")
        for st in exp["stages"]:
            seen.setdefault(st["name"], set()).add(st["status"])
        return exp if exp["status"] in FINISHED else None

    return poll(finished, timeout_s, f"experiment {exp_id}", interval_s=0.25)


def test_two_users_experiments_run_in_queue_order_to_results(platform, settings, poll):
    alice, bob, dataset_id = platform
    submitted: dict[str, dict] = {}
    barrier = threading.Barrier(2)

    def submit(who: str, client: Client) -> None:
        barrier.wait()
        submitted[who] = client("POST", "/experiments", json=tiny_spec(f"e2e-{who}", dataset_id))

    threads = [
        threading.Thread(target=submit, args=(w, c)) for w, c in (("alice", alice), ("bob", bob))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(submitted) == {"alice", "bob"}
    for exp in submitted.values():
        assert [s["name"] for s in exp["stages"]] == ["teacher", "student", "distill", "profile"]
        assert [s["queue"] for s in exp["stages"]] == [settings.gpu_queue] * 3 + [
            settings.profiler_queue
        ]

    seen: dict[str, dict[str, set[str]]] = {"alice": {}, "bob": {}}
    final = {"alice": watch(alice, submitted["alice"]["id"], poll, 480, seen["alice"])}
    final["bob"] = watch(bob, submitted["bob"]["id"], poll, 300, seen["bob"])
    for who, exp in final.items():
        errors = {s["name"]: s["error"] for s in exp["stages"] if s["error"]}
        assert exp["status"] == "succeeded", (who, errors)
        assert all(s["status"] == "succeeded" and s["attempts"] == 1 for s in exp["stages"])
        stages = exp["stages"]
        for before, after in zip(stages, stages[1:], strict=False):  # strictly one after another
            assert before["finished_at"] <= after["started_at"], (who, before["name"])
    # We watched alice's stages run (a training stage is seen running before it succeeds).
    assert "running" in set().union(*seen["alice"].values())

    # Queue order: the two submissions race, so which message reached Redis first is only known
    # from which teacher the single GPU worker started first; from then on the queue is FIFO:
    # that experiment is served first at every stage.
    first, second = sorted(final.values(), key=lambda e: e["stages"][0]["started_at"])
    for a, b in zip(first["stages"], second["stages"], strict=True):
        assert a["finished_at"] < b["finished_at"], a["name"]

    exp = final["alice"]
    exp_id = exp["id"]
    # The results table: teacher, baseline and distilled student, with latency from profiling.
    results = exp["results"]
    assert results, "no results table"
    text = str(results)
    for word in ("teacher", "student", "miou"):
        assert word in text, word
    # Per-epoch metric history: teacher 2 epochs, the others 1.
    metrics = alice("GET", f"/experiments/{exp_id}/metrics")
    history = {s["stage"]: [p["epoch"] for p in s["history"]] for s in metrics["stages"]}
    assert history["teacher"] == [1, 2]
    assert history["student"] == [1] and history["distill"] == [1]
    assert all("miou" in p["values"] for s in metrics["stages"] for p in s["history"])

    # Artifacts in S3: models, results, the profile and the report.
    storage = make_storage(settings, settings.artifacts_bucket)
    keys = {o.key for o in storage.list(f"artifacts/{exp_id}/")}
    for stage in ("teacher", "student", "distill"):
        assert f"artifacts/{exp_id}/{stage}/model.pt" in keys
        assert f"artifacts/{exp_id}/{stage}/results.json" in keys
    assert f"artifacts/{exp_id}/profile/profile.json" in keys
    assert f"artifacts/{exp_id}/report.md" in keys
    listed = {a["key"] for a in exp["artifacts"]}
    assert f"artifacts/{exp_id}/report.md" in listed
    report = next(a for a in exp["artifacts"] if a["key"].endswith("report.md"))
    assert httpx.get(report["url"], timeout=10).status_code == 200  # presigned link works

    # Offline wandb runs: each stage's run folder (and the comparison's) was uploaded next to its
    # artifacts.
    for stage in ("teacher", "student", "distill", "profile", "comparison"):
        runs = [k for k in keys if k.startswith(f"artifacts/{exp_id}/{stage}/wandb/")]
        assert any(k.endswith(".wandb") for k in runs), (stage, runs[:5])
    # The worker fetched the uploaded data set once into its cache, keyed by the bucket.
    assert (Path(settings.cache_dir) / settings.datasets_bucket).is_dir()


def test_cancel_stops_a_running_stage_and_keeps_its_checkpoint(platform, settings, poll):
    alice, _bob, dataset_id = platform
    spec = tiny_spec("e2e-cancel", dataset_id, teacher_epochs=200, stages=("teacher", "student"))
    spec["tracking"]["mode"] = "disabled"
    exp_id = alice("POST", "/experiments", json=spec)["id"]

    def checkpointed() -> dict | None:
        teacher = alice("GET", f"/experiments/{exp_id}")["stages"][0]
        ok = teacher["status"] == "running" and teacher["checkpoint_key"]
        return teacher if ok else None

    poll(checkpointed, 120, "a teacher checkpoint", interval_s=0.25)
    alice("POST", f"/experiments/{exp_id}/cancel")
    exp = poll(
        lambda: (e := alice("GET", f"/experiments/{exp_id}"))["status"] in FINISHED and e,
        60,
        "the cancel",
    )
    teacher, student = exp["stages"]
    assert exp["status"] == "cancelled"
    assert teacher["status"] == "cancelled" and teacher["epoch"] < 200
    assert student["status"] == "cancelled"
    storage = make_storage(settings, settings.artifacts_bucket)
    assert storage.list(teacher["checkpoint_key"] + "/"), "the checkpoint was not kept"
