"""The multi-node stage's Kubernetes objects (services/worker/multinode.py): valid against the
Kubernetes schema, wired together (Service -> pods, rank -> completion index, volumes -> the
base's claim), and the Job status the worker maps back to the stage."""

from __future__ import annotations

import kubernetes_validate
import pytest
from kubernetes.client import ApiClient, V1Job, V1JobCondition, V1JobStatus, V1ObjectMeta

from services.worker.multinode import (
    COMPLETION_INDEX,
    JOB_LABEL,
    MultiNodeJob,
    MultiNodePlan,
    job_phase,
    render,
)

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
    for doc in render(_plan()):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


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


class _Batch:
    """Stands in for BatchV1Api (no API server can run here): serves statuses in turn."""

    def __init__(self, statuses: list[dict]) -> None:
        self.statuses = statuses
        self.deleted: list[tuple[str, str, str]] = []

    def read_namespaced_job_status(self, name: str, namespace: str) -> V1Job:
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return _as_v1(status)

    def delete_namespaced_job(self, name: str, namespace: str, propagation_policy: str) -> None:
        self.deleted.append((name, namespace, propagation_policy))


def _as_v1(status: dict) -> V1Job:
    return V1Job(
        metadata=V1ObjectMeta(name="j"), spec={"completions": 2}, status=V1JobStatus(**status)
    )


def test_wait_follows_the_job_and_a_stop_deletes_it():
    plan = _plan(num_nodes=2)
    watcher = MultiNodeJob(plan, api_client=ApiClient())
    watcher.batch = _Batch([{}, {"active": 2}, {"active": 1, "succeeded": 1}, {"succeeded": 2}])
    phases: list[str] = []
    assert watcher.wait(on_phase=phases.append, poll_s=0) == ("succeeded", "")
    assert phases == ["pending", "running", "succeeded"]

    watcher.batch = _Batch([{"active": 2}])
    calls = iter([False, True])
    assert watcher.wait(should_stop=lambda: next(calls), poll_s=0) == ("failed", "stopped")
    assert watcher.batch.deleted == [(plan.name, plan.namespace, "Foreground")]
