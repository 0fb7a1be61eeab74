"""A training stage on several machines: a Kubernetes indexed Job of `train.num_nodes` pods and a
headless Service for their rendezvous, rendered from code, then created and watched by the worker
that owns the stage (the `kubernetes` client).

Pod `i` of the Job runs ``accelerate launch --num_machines N --machine_rank i`` of the stage
entry point (`distillery.training.launch`); machine 0 is reached at its stable name
``<job>-0.<service>``. The spec (datasets already resolved to the shared dataset cache), the
teacher and the stage's work folder live on the `dataset-cache` volume (ReadWriteMany), so the
owning worker reads the main rank's result and checkpoints where it would after a local launch.

Why an indexed Job rather than Kubeflow's TrainJob/PyTorchJob: it is core Kubernetes (batch/v1,
stable since 1.24), so it runs on any cluster with nothing to install or upgrade; its completion
index is exactly accelerate's machine rank, and its pods get stable DNS names through the
Service; what an operator adds on top (restarts, resume, cancel) the platform already does per
stage (attempts, checkpoints, the lifecycle), and `backoffLimit: 0` leaves those to it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal

from distillery.training.launcher import launch_command

#: The port machine 0 listens on for the rendezvous (inside the pod network).
RENDEZVOUS_PORT = 29500
#: Label every object of one multi-node stage carries (the Service selects the pods by it).
JOB_LABEL = "distillery.dev/multinode-job"
#: The pod annotation an indexed Job sets to the pod's index (accelerate's machine rank).
COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
#: Where the spec ConfigMap is mounted in each pod.
SPEC_DIR = "/etc/distillery/stage"

Phase = Literal["pending", "running", "succeeded", "failed"]


@dataclass(frozen=True)
class MultiNodePlan:
    """What the Job runs: one stage of one experiment, `num_nodes` x `processes_per_node`."""

    stage_id: str
    stage: Literal["teacher", "student", "distill"]
    spec_json: str
    num_nodes: int
    processes_per_node: int
    #: The stage's work folder on the shared volume (results and checkpoints land there).
    workdir: str
    image: str = "distillery/worker"
    namespace: str = "distillery"
    mixed_precision: str = "no"
    teacher_path: str | None = None
    tracker_group: str | None = None
    cache_dir: str = "/var/cache/distillery"
    cache_claim: str = "dataset-cache"
    config_map: str = "distillery-config"
    secret: str = "distillery-secrets"
    #: Pod resources per machine; GPUs default to one per process.
    gpus_per_node: int | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_nodes < 2:
            raise ValueError(f"num_nodes: a multi-node stage needs 2 or more, got {self.num_nodes}")
        if self.processes_per_node < 1:
            raise ValueError(
                f"processes_per_node: must be 1 or more, got {self.processes_per_node}"
            )

    @property
    def name(self) -> str:
        """The Job's (and Service's) name: a DNS label short enough for `<name>-<index>`."""
        slug = re.sub(r"[^a-z0-9-]", "-", f"{self.stage}-{self.stage_id}".lower()).strip("-")
        return f"dist-{slug}"[:52].rstrip("-")

    @property
    def main_host(self) -> str:
        """Machine 0's stable DNS name: `<job>-0.<service>.<namespace>.svc`."""
        return f"{self.name}-0.{self.name}.{self.namespace}.svc"


def node_command(
    plan: MultiNodePlan,
    *,
    machine_rank: int | str,
    main_host: str,
    port: int = RENDEZVOUS_PORT,
    spec_path: str | None = None,
    python: str = "python",
) -> list[str]:
    """The command of one machine (pod `machine_rank`); the rendered Job passes
    ``$(MACHINE_RANK)``, which Kubernetes expands from the pod's completion index."""
    workdir = PurePosixPath(plan.workdir)
    return launch_command(
        num_processes=plan.num_nodes * plan.processes_per_node,
        num_machines=plan.num_nodes,
        machine_rank=machine_rank,
        main_process_ip=main_host,
        mixed_precision=plan.mixed_precision,
        port=port,
        spec_path=spec_path or f"{SPEC_DIR}/spec.json",
        stage=plan.stage,
        workdir=workdir,
        events_path=workdir / plan.stage / "launch" / "progress.jsonl",
        teacher_path=plan.teacher_path,
        tracker_group=plan.tracker_group,
        python=python,
    )


def render(plan: MultiNodePlan) -> list[dict[str, Any]]:
    """The ConfigMap (the spec), the headless Service and the indexed Job of `plan`."""
    labels = {
        "app.kubernetes.io/part-of": "distillery",
        "app.kubernetes.io/component": "multinode-stage",
        JOB_LABEL: plan.name,
        **plan.labels,
    }
    meta = {"name": plan.name, "namespace": plan.namespace, "labels": labels}
    gpus = plan.gpus_per_node if plan.gpus_per_node is not None else plan.processes_per_node
    limits: dict[str, Any] = {"nvidia.com/gpu": gpus} if gpus else {}
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": {"spec.json": plan.spec_json},
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "clusterIP": "None",
            # Machine 0 must resolve before any pod is ready: the rendezvous is how they start.
            "publishNotReadyAddresses": True,
            "selector": {JOB_LABEL: plan.name},
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT}],
        },
    }
    container = {
        "name": "node",
        "image": plan.image,
        "command": node_command(plan, machine_rank="$(MACHINE_RANK)", main_host=plan.main_host),
        "env": [
            {
                "name": "MACHINE_RANK",
                "valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX}},
            },
            {"name": "PYTHONUNBUFFERED", "value": "1"},
        ],
        "envFrom": [
            {"configMapRef": {"name": plan.config_map}},
            {"secretRef": {"name": plan.secret}},
        ],
        "ports": [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}],
        "resources": {"limits": limits, "requests": dict(limits)},
        "volumeMounts": [
            {"name": "dataset-cache", "mountPath": plan.cache_dir},
            {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    }
    pod_spec: dict[str, Any] = {
        "subdomain": plan.name,
        "restartPolicy": "Never",
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000},
        "containers": [container],
        "volumes": [
            {"name": "dataset-cache", "persistentVolumeClaim": {"claimName": plan.cache_claim}},
            {"name": "spec", "configMap": {"name": plan.name}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "4Gi"}},
        ],
    }
    if gpus:
        pod_spec["nodeSelector"] = {"nvidia.com/gpu.present": "true"}
        pod_spec["tolerations"] = [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "completionMode": "Indexed",
            "completions": plan.num_nodes,
            "parallelism": plan.num_nodes,
            # One failed machine fails the stage; the platform retries it (from its checkpoint).
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 3600,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
    return [config_map, service, job]


def job_phase(job: dict[str, Any]) -> tuple[Phase, str]:
    """A Job's phase from its status (the API's JSON form) and why, for the stage's error."""
    status = job.get("status") or {}
    completions = job.get("spec", {}).get("completions", 1)
    for cond in status.get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "succeeded", ""
        if cond.get("type") in ("Failed", "FailureTarget"):
            reason = cond.get("reason") or "Failed"
            return "failed", f"{reason}: {cond.get('message') or 'a machine failed'}"
    if (status.get("succeeded") or 0) >= completions:
        return "succeeded", ""
    if status.get("failed"):
        return "failed", f"{status['failed']} of {completions} machines failed"
    if status.get("active"):
        return "running", ""
    return "pending", ""


class MultiNodeJob:
    """Create, watch and delete one plan's objects through the Kubernetes API."""

    def __init__(self, plan: MultiNodePlan, api_client: Any | None = None) -> None:
        from kubernetes import client, config

        if api_client is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            api_client = client.ApiClient()
        self.plan = plan
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)

    def create(self) -> None:
        """The ConfigMap and the Service, then the Job; the first two are owned by the Job, so
        deleting the Job removes them."""
        config_map, service, job = render(self.plan)
        ns = self.plan.namespace
        created = self.batch.create_namespaced_job(ns, job)
        owner = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": created.metadata.name,
            "uid": created.metadata.uid,
            "blockOwnerDeletion": True,
        }
        for doc in (config_map, service):
            doc["metadata"]["ownerReferences"] = [owner]
        self.core.create_namespaced_config_map(ns, config_map)
        self.core.create_namespaced_service(ns, service)

    def phase(self) -> tuple[Phase, str]:
        job = self.batch.read_namespaced_job_status(self.plan.name, self.plan.namespace)
        return job_phase(self.api_client.sanitize_for_serialization(job))

    def delete(self) -> None:
        """Delete the Job with its pods (and, by ownership, its ConfigMap and Service)."""
        from kubernetes.client.exceptions import ApiException

        try:
            self.batch.delete_namespaced_job(
                self.plan.name, self.plan.namespace, propagation_policy="Foreground"
            )
        except ApiException as e:
            if e.status != 404:
                raise

    def wait(
        self,
        should_stop: Callable[[], bool] | None = None,
        on_phase: Callable[[Phase], None] | None = None,
        poll_s: float = 5.0,
    ) -> tuple[Phase, str]:
        """Poll until the Job succeeds or fails; `should_stop()` deletes it (the stage's cancel
        or the worker's SIGTERM): returns ("failed", "stopped")."""
        last: Phase | None = None
        while True:
            phase, why = self.phase()
            if phase != last and on_phase is not None:
                on_phase(phase)
            last = phase
            if phase in ("succeeded", "failed"):
                return phase, why
            if should_stop is not None and should_stop():
                self.delete()
                return "failed", "stopped"
            time.sleep(poll_s)
