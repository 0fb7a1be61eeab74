"""The multi-node stage's Kubernetes objects (services/worker/multinode.py): valid against the
Kubernetes schema, wired together (Service -> pods, rank -> completion index, volumes -> the
base's claim), the Job status the worker maps back to the stage, and `MultiNodeJob` against an
API server (the fake of tests/support/fake_kube.py, whose pods are local processes)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import kubernetes_validate
import pytest
from kubernetes.client import ApiClient, V1Job, V1JobCondition, V1JobStatus, V1ObjectMeta

from distillery.training.nodes import NodeLaunch
from services.worker.multinode import (
    COMPLETION_INDEX,
    JOB_LABEL,
    JobRanks,
    MultiNodeJob,
    MultiNodePlan,
    MultiNodeUnavailable,
    check_shared,
    job_phase,
    render,
)
from tests.support import devstack
from tests.support.fake_kube import FakeCluster

from .manifests import K8S_VERSION


def _plan(**overrides) -> MultiNodePlan:
    base = dict(
        stage_id="0f3c2a9e-4b1d-4c55-9a77-1234567890ab",
        stage="distill",
        spec_json='{"name": "x"}',
        num_nodes=3,
        processes_per_node=2,
        workdir="/var/cache/distillery/multinode/0f3c2a9e",
        teacher_path="/var/cache/distillery/multinode/0f3c2a9e/teacher/model.pt",
    )
    return MultiNodePlan(**(base | overrides))


def _by_kind(docs):
    return {d["kind"]: d for d in docs}


def test_rendered_objects_validate_against_the_kubernetes_schema():
    for doc in render(_plan(owner_pod=("gpu-worker-5d8f-x2x", "6f1c-uid"))):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_job_is_owned_by_the_worker_pod_that_owns_the_stage(rendered):
    docs = _by_kind(render(_plan(owner_pod=("gpu-worker-5d8f-x2x", "6f1c-uid"))))
    (owner,) = docs["Job"]["metadata"]["ownerReferences"]
    assert owner == {"apiVersion": "v1", "kind": "Pod", "name": "gpu-worker-5d8f-x2x",
                     "uid": "6f1c-uid"}  # fmt: skip
    assert "ownerReferences" not in docs["Service"]["metadata"]  # the Job owns those (create)
    assert "ownerReferences" not in _by_kind(render(_plan()))["Job"]["metadata"]
    # The base's gpu-worker tells the worker its pod and namespace (downward API).
    worker = next(
        d
        for d in rendered["base"]
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "gpu-worker"
    )
    env = {e["name"]: e for e in worker["spec"]["template"]["spec"]["containers"][0]["env"]}
    fields = {name: e["valueFrom"]["fieldRef"]["fieldPath"] for name, e in env.items()}
    assert fields == {
        "DISTILLERY_MULTINODE_NAMESPACE": "metadata.namespace",
        "DISTILLERY_WORKER_POD_NAME": "metadata.name",
        "DISTILLERY_WORKER_POD_UID": "metadata.uid",
    }


def test_job_is_indexed_and_its_pods_meet_at_machine_zero(rendered):
    plan = _plan()
    docs = _by_kind(render(plan))
    job, service, config_map = docs["Job"], docs["Service"], docs["ConfigMap"]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 3
    assert spec["backoffLimit"] == 0  # the platform retries the stage, from its checkpoint
    pod = spec["template"]["spec"]
    # Headless Service selecting exactly these pods; the pods' subdomain gives `<job>-0.<svc>`.
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    selector = service["spec"]["selector"]
    assert selector.items() <= spec["template"]["metadata"]["labels"].items()
    assert selector == {JOB_LABEL: plan.name}
    assert pod["subdomain"] == service["metadata"]["name"] == plan.name
    assert plan.main_host == f"{plan.name}-0.{plan.name}.{plan.namespace}.svc"
    assert len(f"{plan.name}-{spec['completions'] - 1}") <= 63

    (container,) = pod["containers"]
    cmd = container["command"]

    def opt(name: str) -> str:
        return cmd[cmd.index(name) + 1]

    assert cmd[:3] == ["python", "-m", "accelerate.commands.launch"]
    assert opt("--num_machines") == "3" and opt("--num_processes") == "6"
    assert opt("--machine_rank") == "$(MACHINE_RANK)"
    assert opt("--main_process_ip") == plan.main_host
    assert opt("--main_process_port") == str(service["spec"]["ports"][0]["port"])
    assert opt("--stage") == "distill" and opt("--teacher") == plan.teacher_path
    env = {e["name"]: e for e in container["env"]}
    assert env["MACHINE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == COMPLETION_INDEX
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    # The spec comes from the ConfigMap; work, datasets and teacher from the base's shared claim.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert opt("--spec").startswith(mounts["spec"] + "/")
    assert opt("--spec").rsplit("/", 1)[1] in config_map["data"]
    assert volumes["spec"]["configMap"]["name"] == config_map["metadata"]["name"]
    claim = volumes["dataset-cache"]["persistentVolumeClaim"]["claimName"]
    base_claims = {
        d["metadata"]["name"] for d in rendered["base"] if d["kind"] == "PersistentVolumeClaim"
    }
    assert claim in base_claims
    assert opt("--workdir").startswith(mounts["dataset-cache"])
    # The pods read the same settings as the worker that owns the stage.
    base_worker = next(
        d
        for d in rendered["base"]
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "gpu-worker"
    )
    worker_container = base_worker["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == worker_container["envFrom"]
    assert container["image"] == worker_container["image"].split(":")[0]


def test_a_single_node_plan_is_refused():
    with pytest.raises(ValueError, match="num_nodes"):
        _plan(num_nodes=1)


def _job(completions=2, **status) -> dict:
    conditions = status.pop("conditions", None)
    job = V1Job(
        metadata=V1ObjectMeta(name="j"),
        spec={"completions": completions, "template": {}},
        status=V1JobStatus(
            conditions=[V1JobCondition(**c) for c in conditions] if conditions else None,
            **status,
        ),
    )
    return ApiClient().sanitize_for_serialization(job)


@pytest.mark.parametrize(
    ("status", "phase"),
    [
        ({}, "pending"),
        ({"active": 2}, "running"),
        ({"active": 1, "succeeded": 1}, "running"),
        ({"succeeded": 2}, "succeeded"),
        ({"conditions": [{"type": "Complete", "status": "True"}]}, "succeeded"),
        ({"active": 1, "failed": 1}, "failed"),
        (
            {
                "conditions": [
                    {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}
                ]
            },
            "failed",
        ),
        ({"active": 2, "conditions": [{"type": "Failed", "status": "False"}]}, "running"),
    ],
)
def test_job_status_maps_to_the_stage(status, phase):
    got, why = job_phase(_job(**status))
    assert got == phase
    if phase == "failed":
        assert why


# ------------------------------------------------------------- against a (fake) API server


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[FakeCluster]:
    """The fake API server (tests/support/fake_kube.py) with the base's settings objects."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env |= {"PYTHONPATH": str(devstack.REPO), "OMP_NUM_THREADS": "1"}
    with FakeCluster(
        tmp_path / "cluster", env, claims={"dataset-cache": tmp_path / "cache"}, grace_s=5
    ) as fake:
        fake.put({"kind": "ConfigMap", "metadata": {"name": "distillery-config"}, "data": {}})
        fake.put({"kind": "Secret", "metadata": {"name": "distillery-secrets"}, "data": {}})
        yield fake


def _client(cluster: FakeCluster, tmp_path: Path):
    from kubernetes import config

    return config.new_client_from_config(str(cluster.kubeconfig(tmp_path / "kubeconfig")))


def _local_plan(tmp_path: Path, **overrides) -> MultiNodePlan:
    cache = tmp_path / "cache"
    return _plan(
        **{
            "num_nodes": 2,
            "processes_per_node": 1,
            "workdir": str(cache / "multinode" / "exp"),
            "cache_dir": str(cache),
            "teacher_path": None,
            "gpus_per_node": 0,
            **overrides,
        }
    )


def _settings_objects(cluster: FakeCluster) -> None:
    assert cluster.names("configmaps") == ["distillery-config"]
    assert cluster.names("secrets") == ["distillery-secrets"]


def test_the_job_is_created_replaced_and_deleted_through_the_api(cluster, tmp_path, rendered):
    """...with exactly the requests the gpu-worker's Role (k8s/base) allows."""
    plan = _local_plan(tmp_path)
    job = MultiNodeJob(plan, api_client=_client(cluster, tmp_path))
    job.create()
    assert cluster.names("jobs") == cluster.names("services") == [plan.name]
    assert plan.name in cluster.names("configmaps")
    first = cluster.job_pods(plan.name)
    for rank, pod in enumerate(first):

        def opt(name: str, argv=pod.argv) -> str:
            return argv[argv.index(name) + 1]

        # What the pod runs: its index as the machine rank, machine 0 by its DNS name (on this
        # machine: loopback), the spec from the ConfigMap volume.
        assert pod.env["MACHINE_RANK"] == pod.env["JOB_COMPLETION_INDEX"] == str(rank)
        assert opt("--machine_rank") == str(rank)
        assert opt("--main_process_ip") == "127.0.0.1"
        assert Path(opt("--spec")).read_text() == plan.spec_json
    assert job.phase()[0] in ("pending", "running")
    assert job.failed_pods() == []

    # A worker that died left its Job: the next attempt replaces it (the old pods are stopped).
    again = MultiNodeJob(plan, api_client=_client(cluster, tmp_path))
    again.create()
    assert all(pod.stopped and pod.popen.poll() is not None for pod in first)
    second = cluster.job_pods(plan.name)
    assert len(second) == 2 and not {p.name for p in second} & {p.name for p in first}

    again.delete()
    assert cluster.names("jobs") == cluster.names("services") == cluster.names("pods") == []
    _settings_objects(cluster)  # only the Job's own objects went
    assert all(pod.popen.poll() is not None for pod in second)
    assert cluster.deletes()[-3:] == [
        f"jobs/{plan.name}",
        f"services/{plan.name}",
        f"configmaps/{plan.name}",
    ]
    again.delete()  # already gone: nothing to do
    assert cluster.rbac_requests() == _granted_to_the_gpu_worker(rendered["base"])


def _granted_to_the_gpu_worker(docs) -> set[tuple[str, str, str]]:
    """(API group, resource, verb) the base's Roles grant the gpu-worker's service account."""
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    worker = by_kind[("Deployment", "gpu-worker")]["spec"]["template"]["spec"]
    account = worker["serviceAccountName"]
    assert ("ServiceAccount", account) in by_kind
    granted = set()
    for (kind, _), binding in by_kind.items():
        if kind != "RoleBinding":
            continue
        if not any(
            s["kind"] == "ServiceAccount" and s["name"] == account for s in binding["subjects"]
        ):
            continue
        role = by_kind[("Role", binding["roleRef"]["name"])]
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    granted |= {(group, resource, verb) for verb in rule["verbs"]}
    return granted


@pytest.mark.slow
def test_a_failed_machine_fails_the_job_with_its_message(cluster, tmp_path):
    plan = _local_plan(tmp_path, spec_json='{"name": "no data"}')  # every machine refuses it
    ranks = JobRanks(MultiNodeJob(plan, api_client=_client(cluster, tmp_path)))
    ranks.job.create()
    deadline = time.monotonic() + 300
    while (code := ranks.poll()) is None:
        assert time.monotonic() < deadline, [p.log_tail() for p in cluster.all_pods()]
        time.sleep(0.5)
    assert code == 1
    message = ranks.failure()
    assert message.startswith(f"the Kubernetes Job {plan.name} failed (BackoffLimitExceeded")
    # Each failed machine, with its termination message (the end of its log: torchrun's report).
    assert "machine 0 (pod " in message and "machine 1 (pod " in message
    assert "Error, exit code 1:" in message and "distillery.training.launch FAILED" in message
    # The ranks' own errors reach the worker through the shared work folder (the launcher puts
    # them first in the stage's error).
    errors = Path(plan.workdir) / "distill" / "launch" / "errors"
    for rank in (0, 1):
        assert "data: Field required" in (errors / f"rank-{rank}.txt").read_text()
    ranks.terminate()
    assert cluster.names("jobs") == []


def test_what_the_machines_read_must_be_on_the_volume_they_share(tmp_path):
    shared = tmp_path / "cache"
    spec = {"data": {"train": [{"root": str(shared / "data")}], "val": [{"root": "/data/val"}]}}
    launch = NodeLaunch(
        stage="distill",
        spec_json=json.dumps(spec),
        num_nodes=2,
        processes_per_node=1,
        mixed_precision="no",
        workdir=shared / "multinode" / "exp",
        events_path=shared / "multinode" / "exp" / "distill" / "launch" / "progress.jsonl",
        pause_flag=shared / "multinode" / "exp" / "distill" / "launch" / "pause",
        teacher_path=shared / "multinode" / "exp" / "teacher" / "model.pt",
    )
    with pytest.raises(ValueError, match=r"^data\.val\[0\]\.root: /data/val is not on the volume"):
        check_shared(launch, shared)
    spec["data"]["val"] = spec["data"]["train"]
    check_shared(replace(launch, spec_json=json.dumps(spec)), shared)
    with pytest.raises(ValueError, match=r"^teacher: /elsewhere/model\.pt is not on the volume"):
        check_shared(
            replace(launch, spec_json=json.dumps(spec), teacher_path=Path("/elsewhere/model.pt")),
            shared,
        )


def test_without_kubernetes_configuration_the_stage_is_refused_at_once(monkeypatch, tmp_path):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(MultiNodeUnavailable, match=r"train\.num_nodes: 3 machines .* no Kub"):
        MultiNodeJob(_plan())
