"""Multi-node stages through the GPU worker: a real Celery worker takes a stage with
`train.num_nodes: 2` and runs it as a Kubernetes indexed Job through the API (the fake API server
of tests/support/fake_kube.py, whose pods are local processes: 2 machines x 1 gloo process on
loopback under `accelerate launch`), then maps the Job's end to the stage's."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from distillery.db import Experiment, Metric, Stage, StageStatus
from distillery.s3 import make_storage
from distillery.settings import Settings
from distillery.stages import keys, lifecycle
from tests.support import devstack
from tests.support.devstack import Process
from tests.support.experiments import submit, tiny_spec
from tests.support.fake_kube import FakeCluster

pytestmark = pytest.mark.slow

#: Seconds a stage gets to end: two machines start torch and rendezvous on a busy 2-core box.
STAGE_TIMEOUT_S = 480


@pytest.fixture
def cluster(settings: Settings, tmp_path: Path) -> Iterator[FakeCluster]:
    """The fake cluster: the dataset-cache claim is the worker's cache folder (as in k8s/base),
    the pods' image is this Python with the repository, `distillery-config` holds the settings."""
    image = devstack.process_env(settings) | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
    }
    with FakeCluster(
        tmp_path / "cluster", image, claims={"dataset-cache": settings.cache_dir}, grace_s=5
    ) as fake:
        env = devstack.process_env(settings)
        data = {k: v for k, v in env.items() if k.startswith("DISTILLERY_")}
        fake.put({"kind": "ConfigMap", "metadata": {"name": "distillery-config"}, "data": data})
        fake.put({"kind": "Secret", "metadata": {"name": "distillery-secrets"}, "data": {}})
        yield fake
        for pod in fake.all_pods():
            print(f"--- pod {pod.name} ---\n{pod.log_tail()}")


@pytest.fixture
def start_gpu_worker(settings: Settings, processes) -> Callable[..., Process]:
    """`start_gpu_worker(**env) -> Process`: a Celery GPU worker with `env` added (KUBECONFIG)."""

    def start(**env: str) -> Process:
        proc = devstack.start_worker(
            devstack.process_env(settings) | env,
            settings.gpu_queue,
            log_path=processes.log_path("worker-gpu"),
        )
        return processes.add(proc)

    return start


def _submit(
    settings: Settings, session_factory, epochs: int, steps: int, num_train: int = 8
) -> tuple[str, int]:
    """A student stage on 2 machines x 1 process; its data on the shared volume (the cache)."""
    spec = tiny_spec(
        "multinode",
        Path(settings.cache_dir) / "data",
        epochs=epochs,
        steps=steps,
        stages=["student"],
        num_train=num_train,
        num_processes=1,
        num_nodes=2,
    )
    exp_id, (stage_id,) = submit(session_factory, settings, spec)
    return exp_id, stage_id


def _stage(session_factory, stage_id: int) -> Stage:
    with session_factory() as s:
        return s.get(Stage, stage_id)


def _job_is_gone(cluster: FakeCluster, job: str) -> None:
    assert cluster.names("jobs") == cluster.names("services") == cluster.names("pods") == []
    assert cluster.names("configmaps") == ["distillery-config"]
    assert {f"jobs/{job}", f"services/{job}", f"configmaps/{job}"} <= set(cluster.deletes())
    assert all(p.popen is None or p.popen.poll() is not None for p in cluster.all_pods())


def test_a_two_machine_stage_runs_as_a_job_and_succeeds(
    settings, session_factory, cluster, start_gpu_worker, tmp_path, poll
):
    exp_id, stage_id = _submit(settings, session_factory, epochs=2, steps=2)
    start_gpu_worker(KUBECONFIG=str(cluster.kubeconfig(tmp_path / "kubeconfig")))
    poll(lambda: _stage(session_factory, stage_id).status.finished, STAGE_TIMEOUT_S, "stage")
    stage = _stage(session_factory, stage_id)
    assert stage.status == StageStatus.succeeded, stage.error

    # It ran as the Job's two pods: machine i of 2, meeting at machine 0.
    job = f"dist-student-{exp_id}"
    pods = sorted(cluster.all_pods(), key=lambda p: p.name)  # the Job is deleted by now
    assert [p.env["JOB_COMPLETION_INDEX"] for p in pods] == ["0", "1"]
    for rank, pod in enumerate(pods):
        argv = pod.argv
        assert argv[argv.index("--machine_rank") + 1] == str(rank)
        assert argv[argv.index("--num_machines") + 1] == "2"
        assert pod.popen.returncode == 0
    # Both ranks ended with the same weights, in the stage's folder on the shared volume.
    stage_dir = Path(settings.cache_dir) / "multinode" / exp_id / "student"
    reports = [json.loads((stage_dir / "result" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2]
    assert reports[0]["state_hash"] == reports[1]["state_hash"]
    # The result, model and checkpoint are where a local run puts them, and stored as after one.
    assert (stage_dir / "result.json").is_file() and (stage_dir / "model.pt").is_file()
    assert any((stage_dir / "ckpt").glob("step-*/trainer_state.json"))
    artifacts = make_storage(settings, settings.artifacts_bucket)
    assert stage.model_key and artifacts.exists(stage.model_key)
    newest = max((stage_dir / "ckpt").glob("step-*"), key=lambda d: int(d.name.split("-")[1]))
    assert stage.checkpoint_key == keys.checkpoint_key(exp_id, "student", newest.name)
    assert artifacts.list(stage.checkpoint_key + "/")
    assert stage.result["metrics"]["miou"] >= 0
    # The main rank's progress reached the stage: both epochs' metrics, once each.
    with session_factory() as s:
        epochs = s.scalars(select(Metric.epoch).where(Metric.stage_id == stage_id)).all()
    assert sorted(epochs) == [1, 2]
    _job_is_gone(cluster, job)


def _training(settings, session_factory, cluster, start_gpu_worker, tmp_path, poll):
    """A long multi-node stage, once its machines train (their progress reached the stage);
    returns (experiment id, stage id, Job name)."""
    exp_id, stage_id = _submit(settings, session_factory, epochs=500, steps=4)
    start_gpu_worker(KUBECONFIG=str(cluster.kubeconfig(tmp_path / "kubeconfig")))
    poll(lambda: _stage(session_factory, stage_id).step >= 1, STAGE_TIMEOUT_S, "training")
    job = f"dist-student-{exp_id}"
    assert cluster.names("jobs") == [job]
    return exp_id, stage_id, job


def test_a_failed_machine_fails_the_stage_with_its_message(
    settings, session_factory, cluster, start_gpu_worker, tmp_path, poll
):
    _, stage_id, job = _training(
        settings, session_factory, cluster, start_gpu_worker, tmp_path, poll
    )
    (machine_1,) = [p for p in cluster.job_pods(job) if p.env["JOB_COMPLETION_INDEX"] == "1"]
    os.killpg(machine_1.popen.pid, signal.SIGKILL)  # the machine is lost

    poll(lambda: _stage(session_factory, stage_id).status.finished, 120, "stage to fail")
    stage = _stage(session_factory, stage_id)
    assert stage.status == StageStatus.failed
    assert f"the Kubernetes Job {job} failed (BackoffLimitExceeded" in stage.error
    assert f"machine 1 (pod {machine_1.name}): Error, exit code 137" in stage.error
    _job_is_gone(cluster, job)


def test_cancelling_a_multi_node_stage_deletes_its_job(
    settings, session_factory, cluster, start_gpu_worker, tmp_path, poll
):
    exp_id, stage_id, job = _training(
        settings, session_factory, cluster, start_gpu_worker, tmp_path, poll
    )
    with session_factory.begin() as s:
        lifecycle.request_cancel(s, s.get(Experiment, exp_id))

    poll(lambda: _stage(session_factory, stage_id).status.finished, 120, "stage to cancel")
    assert _stage(session_factory, stage_id).status == StageStatus.cancelled
    _job_is_gone(cluster, job)


def test_sigterm_pauses_the_machines_at_a_checkpoint_and_the_stage_resumes_from_it(
    settings, session_factory, cluster, start_gpu_worker, tmp_path, poll
):
    exp_id, stage_id = _submit(settings, session_factory, epochs=3, steps=30, num_train=60)
    kubeconfig = str(cluster.kubeconfig(tmp_path / "kubeconfig"))
    first = start_gpu_worker(KUBECONFIG=kubeconfig)
    poll(lambda: _stage(session_factory, stage_id).step >= 3, STAGE_TIMEOUT_S, "a few steps")
    job = f"dist-student-{exp_id}"
    first.popen.send_signal(signal.SIGTERM)  # what Kubernetes sends on eviction
    first.popen.wait(120)
    # The machines saw the pause flag on the shared volume, checkpointed the step and exited;
    # the worker deleted their Job and gave the stage back to the queue.
    stage = _stage(session_factory, stage_id)
    assert stage.status == StageStatus.queued and stage.worker_id is None, stage.error
    paused_at = int(stage.checkpoint_key.rsplit("step-", 1)[1])
    assert 3 <= paused_at < 3 * stage.steps  # where it was told to stop, before the end
    _job_is_gone(cluster, job)
    first_pods = {p.name for p in cluster.all_pods()}

    start_gpu_worker(KUBECONFIG=kubeconfig)
    poll(lambda: _stage(session_factory, stage_id).status.finished, STAGE_TIMEOUT_S, "resumed")
    stage = _stage(session_factory, stage_id)
    assert stage.status == StageStatus.succeeded, stage.error
    assert stage.attempts == 2
    # A new Job (new pods) resumed at the checkpoint: every epoch validated once.
    assert {p.name for p in cluster.all_pods()} > first_pods
    with session_factory() as s:
        epochs = s.scalars(select(Metric.epoch).where(Metric.stage_id == stage_id)).all()
    assert sorted(epochs) == [1, 2, 3]
    _job_is_gone(cluster, job)


def test_a_worker_without_kubernetes_fails_the_stage_at_once(
    settings, session_factory, start_gpu_worker, tmp_path, poll
):
    _exp_id, stage_id = _submit(settings, session_factory, epochs=1, steps=1)
    start_gpu_worker(KUBECONFIG=str(tmp_path / "no-kubeconfig"), HOME=str(tmp_path))
    poll(lambda: _stage(session_factory, stage_id).status.finished, 120, "stage to fail")
    stage = _stage(session_factory, stage_id)
    assert stage.status == StageStatus.failed
    assert "MultiNodeUnavailable: train.num_nodes: 2 machines run as a Kubernetes Job" in (
        stage.error
    )
    assert "no Kubernetes configuration" in stage.error
    assert not (Path(settings.cache_dir) / "data").exists()  # nothing was trained
