"""A training stage on several machines: a Kubernetes indexed Job of `train.num_nodes` pods and a
headless Service for their rendezvous, rendered from code, then created and watched by the worker
that owns the stage (the `kubernetes` client).

Pod `i` of the Job runs ``accelerate launch --num_machines N --machine_rank i`` of the stage
entry point (`distillery.training.launch`); machine 0 is reached at its stable name
``<job>-0.<service>``. The spec (datasets already resolved to the shared dataset cache), the
teacher and the stage's work folder live on the `dataset-cache` volume (ReadWriteMany), so the
owning worker reads the main rank's result and checkpoints where it would after a local launch.

The worker plugs this into the stage's life through `StageHooks.launch_nodes` (`node_launcher`):
the library's launcher follows the Job as `JobRanks` (its status, the failed pods' messages,
deleting it) exactly as it follows local ranks, replaying progress from the shared folder and
asking the machines to pause through a flag file there (`distillery.training.launcher`).

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
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from distillery.settings import Settings
from distillery.training.launcher import EVENTS_FILE, LAUNCH_DIR, launch_command
from distillery.training.nodes import NodeLaunch

#: The port machine 0 listens on for the rendezvous (inside the pod network).
RENDEZVOUS_PORT = 29500
#: Label every object of one multi-node stage carries (the Service selects the pods by it).
JOB_LABEL = "distillery.dev/multinode-job"
#: The pod annotation an indexed Job sets to the pod's index (accelerate's machine rank), and
#: the field path the pod's MACHINE_RANK comes from.
COMPLETION_INDEX_KEY = "batch.kubernetes.io/job-completion-index"
COMPLETION_INDEX = f"metadata.annotations['{COMPLETION_INDEX_KEY}']"
#: Where the spec ConfigMap is mounted in each pod.
SPEC_DIR = "/etc/distillery/stage"
#: How much of a failed pod's termination message (the end of its log) the stage's error shows.
MESSAGE_CHARS = 1500

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
    #: The worker pod that owns the stage (name, uid): the Job is its dependent, so Kubernetes'
    #: garbage collector deletes the Job if that pod goes away (a lost node) before the worker
    #: could. None outside a cluster.
    owner_pod: tuple[str, str] | None = None

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
        events_path=workdir / plan.stage / LAUNCH_DIR / EVENTS_FILE,
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
    meta: dict[str, Any] = {"name": plan.name, "namespace": plan.namespace, "labels": labels}
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
        # A failed machine's message is the end of its log (what the stage's error shows).
        "terminationMessagePolicy": "FallbackToLogsOnError",
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
        # The machines train; they never call the API (only the owning worker does).
        "automountServiceAccountToken": False,
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
    job_meta = dict(meta)
    if plan.owner_pod is not None:
        name, uid = plan.owner_pod
        job_meta["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}
        ]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": job_meta,
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


class MultiNodeUnavailable(RuntimeError):
    """This worker cannot reach a Kubernetes API (not in a cluster, no kubeconfig)."""


def kube_api_client(num_nodes: int) -> Any:
    """A client of the cluster this worker runs in (its service account), else of the cluster
    its kubeconfig (`KUBECONFIG`, ``~/.kube/config``) names; `MultiNodeUnavailable` otherwise,
    at once, so the stage fails with the reason instead of waiting for machines."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException as in_cluster:
        try:
            config.load_kube_config(client_configuration=configuration)
        except Exception as e:  # noqa: BLE001 - a missing or broken kubeconfig, said below
            raise MultiNodeUnavailable(
                f"train.num_nodes: {num_nodes} machines run as a Kubernetes Job, and this worker "
                f"has no Kubernetes configuration: not in a cluster ({in_cluster}) and no "
                f"usable kubeconfig (KUBECONFIG or ~/.kube/config: {e})"
            ) from None
    return client.ApiClient(configuration)


class MultiNodeJob:
    """Create, watch and delete one plan's objects through the Kubernetes API."""

    #: Seconds to wait for a leftover Job of an earlier attempt to be gone before creating.
    REPLACE_TIMEOUT_S = 120.0

    def __init__(self, plan: MultiNodePlan, api_client: Any | None = None) -> None:
        from kubernetes import client

        self.plan = plan
        self.api_client = api_client or kube_api_client(plan.num_nodes)
        self.core = client.CoreV1Api(self.api_client)
        self.batch = client.BatchV1Api(self.api_client)

    def create(self) -> None:
        """The Job, then its ConfigMap and Service (owned by the Job, so Kubernetes' garbage
        collector removes them with it if the worker cannot). A Job of an earlier attempt of
        the same stage (its worker died before deleting it) is deleted first."""
        from kubernetes.client.exceptions import ApiException

        config_map, service, job = render(self.plan)
        ns = self.plan.namespace
        try:
            created = self.batch.create_namespaced_job(ns, job)
        except ApiException as e:
            if e.status != 409:
                raise
            self.delete()
            self._wait_gone()
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

    def _wait_gone(self) -> None:
        from kubernetes.client.exceptions import ApiException

        deadline = time.monotonic() + self.REPLACE_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                self.batch.read_namespaced_job(self.plan.name, self.plan.namespace)
            except ApiException as e:
                if e.status == 404:
                    return
                raise
            time.sleep(1.0)
        raise TimeoutError(
            f"the Job {self.plan.name} of an earlier attempt was not deleted within "
            f"{self.REPLACE_TIMEOUT_S:.0f} s"
        )

    def phase(self) -> tuple[Phase, str]:
        job = self.batch.read_namespaced_job_status(self.plan.name, self.plan.namespace)
        return job_phase(self.api_client.sanitize_for_serialization(job))

    def failed_pods(self) -> list[str]:
        """What each failed machine says: its index, pod, reason, exit code and termination
        message (the end of its log: the pods use `FallbackToLogsOnError`)."""
        pods = self.core.list_namespaced_pod(
            self.plan.namespace, label_selector=f"{JOB_LABEL}={self.plan.name}"
        )
        found = []
        for pod in self.api_client.sanitize_for_serialization(pods).get("items", []):
            status = pod.get("status") or {}
            if status.get("phase") != "Failed":
                continue
            meta = pod.get("metadata") or {}
            index = (meta.get("annotations") or {}).get(COMPLETION_INDEX_KEY, "?")
            what = status.get("reason") or status.get("message") or "Failed"
            for container in status.get("containerStatuses") or []:
                ended = (container.get("state") or {}).get("terminated")
                if ended:
                    what = f"{ended.get('reason') or 'Error'}, exit code {ended.get('exitCode')}"
                    if ended.get("message"):
                        what += f":\n{ended['message'].strip()[-MESSAGE_CHARS:]}"
            found.append(f"machine {index} (pod {meta.get('name')}): {what}")
        return sorted(found)

    def delete(self) -> None:
        """Delete the Job with its pods (foreground), its Service and its ConfigMap; what is
        already gone is fine."""
        from kubernetes.client.exceptions import ApiException

        name, ns = self.plan.name, self.plan.namespace
        for delete in (
            lambda: self.batch.delete_namespaced_job(name, ns, propagation_policy="Foreground"),
            lambda: self.core.delete_namespaced_service(name, ns),
            lambda: self.core.delete_namespaced_config_map(name, ns),
        ):
            try:
                delete()
            except ApiException as e:
                if e.status != 404:
                    raise


class JobRanks:
    """The ranks of a stage running as a `MultiNodeJob` (`distillery.training.nodes.Ranks`):
    the stage's launcher follows them as it follows local processes."""

    #: Seconds between reads of the Job's status (the launcher polls more often).
    POLL_S = 2.0

    def __init__(self, job: MultiNodeJob) -> None:
        self.job = job
        self._checked = 0.0
        self._phase: Phase = "pending"
        self._why = ""
        self._deleted = False

    def poll(self) -> int | None:
        now = time.monotonic()
        if self._phase in ("pending", "running") and now - self._checked >= self.POLL_S:
            self._checked = now
            self._phase, self._why = self.job.phase()
        if self._phase == "succeeded":
            return 0
        return 1 if self._phase == "failed" else None

    def terminate(self) -> None:
        if not self._deleted:
            self.job.delete()
            self._deleted = True

    def failure(self) -> str:
        try:
            pods = self.job.failed_pods()
        except Exception as e:  # noqa: BLE001 - the Job's own reason still says what happened
            pods = [f"(its pods could not be listed: {e})"]
        return "\n".join([f"the Kubernetes Job {self.job.plan.name} failed ({self._why})", *pods])


def shared_work_dir(settings: Settings) -> Path:
    """Where multi-node stages work: on the dataset-cache volume every machine mounts."""
    return Path(settings.cache_dir) / "multinode"


def node_launcher(settings: Settings) -> Callable[[NodeLaunch], JobRanks]:
    """`StageHooks.launch_nodes` of the GPU worker: a `MultiNodeJob` per stage, created in
    `settings.multinode_namespace` with the worker image `settings.multinode_image`."""

    owner = (settings.worker_pod_name, settings.worker_pod_uid)

    def launch(launch: NodeLaunch) -> JobRanks:
        shared = Path(settings.cache_dir)
        check_shared(launch, shared)
        plan = MultiNodePlan(
            stage_id=launch.workdir.name,  # the experiment: one Job per stage of it
            stage=launch.stage,  # type: ignore[arg-type]
            spec_json=launch.spec_json,
            num_nodes=launch.num_nodes,
            processes_per_node=launch.processes_per_node,
            workdir=str(launch.workdir),
            image=settings.multinode_image,
            namespace=settings.multinode_namespace,
            mixed_precision=launch.mixed_precision,
            teacher_path=str(launch.teacher_path) if launch.teacher_path else None,
            tracker_group=launch.tracker_group,
            cache_dir=str(shared),
            owner_pod=owner if all(owner) else None,
        )
        job = MultiNodeJob(plan)
        try:
            job.create()
        except BaseException:
            job.delete()
            raise
        return JobRanks(job)

    return launch


def check_shared(launch: NodeLaunch, shared: Path) -> None:
    """Every path the machines read or write must be on the volume they share (`shared`, the
    dataset cache): the work folder, the teacher and each dataset (`ValueError` naming it)."""
    import json

    spec = json.loads(launch.spec_json)
    paths = {"work folder": str(launch.workdir)}
    if launch.teacher_path is not None:
        paths["teacher"] = str(launch.teacher_path)
    for split in ("train", "val"):
        for i, ref in enumerate(spec.get("data", {}).get(split) or []):
            paths[f"data.{split}[{i}].root"] = ref.get("root") or ""
    for what, path in paths.items():
        if not Path(path).resolve().is_relative_to(shared.resolve()):
            raise ValueError(
                f"{what}: {path} is not on the volume the machines of a multi-node stage share "
                f"({shared}); use a registered dataset (dataset_id) or a folder under it"
            )
