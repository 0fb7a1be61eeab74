"""A fake Kubernetes API server for the multi-node tests: real HTTP on 127.0.0.1 (the stdlib's
`http.server` on a thread), serving the few endpoints `services.worker.multinode.MultiNodeJob`
calls, and running each created Job's pods as local processes.

No API server can run on this machine, so this stands in for one and for its kubelet:

- ConfigMaps, Secrets, Services and Jobs are created, read and deleted as the API does them
  (201, 200, 404 `NotFound`, 409 `AlreadyExists`, as `Status` objects); pods are listed by label.
  There is no garbage collector: deleting a Job deletes its pods only, so a test sees whether
  the worker deletes the Job's Service and ConfigMap itself. `requests` records every request.
- A Job (`completionMode: Indexed`) gets `completions` pods at once. Each runs its container's
  command as a process group with the environment the pod would have (`envFrom` ConfigMaps and
  Secrets from the store, `env` values and field references, `JOB_COMPLETION_INDEX`, `$(VAR)`
  expanded) on top of `base_env` (the "image": this Python first on PATH). Where this machine
  differs from a cluster, the command's arguments are translated as the pod network and volumes
  would make them work: a volume's mount path becomes its host folder (ConfigMap volumes are
  written out, a claim maps through `claims`), a pod's DNS name
  (`<hostname>.<subdomain>[.<ns>.svc]`) becomes 127.0.0.1, and each container port a free port
  of this machine, the same for every pod of the Job.
- Pods end Succeeded or Failed from their exit codes (a signal `n` reports `128 + n`); a failed
  container's termination message is the end of its log (`FallbackToLogsOnError`). A Job is
  Complete when every index succeeded and Failed (`BackoffLimitExceeded`, its other pods
  stopped) once more pods failed than `backoffLimit`. Deleting it stops its pods (SIGTERM, then
  SIGKILL after `grace_s`).

    with FakeCluster(tmp / "cluster", base_env, claims={"dataset-cache": cache}) as cluster:
        env["KUBECONFIG"] = str(cluster.kubeconfig(tmp / "kubeconfig"))
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.support.devstack import free_port

#: Resources served: URL plural -> (API prefix, kind).
RESOURCES = {
    "configmaps": ("/api/v1", "ConfigMap"),
    "secrets": ("/api/v1", "Secret"),
    "services": ("/api/v1", "Service"),
    "pods": ("/api/v1", "Pod"),
    "jobs": ("/apis/batch/v1", "Job"),
}
PATH = re.compile(
    r"^(?P<api>/api/v1|/apis/batch/v1)/namespaces/(?P<ns>[^/]+)/(?P<plural>[a-z]+)"
    r"(?:/(?P<name>[^/]+))?(?P<status>/status)?$"
)
#: What kubelet keeps of a failed container's log as its termination message.
MESSAGE_BYTES, MESSAGE_LINES = 2048, 80
INDEX_KEY = "batch.kubernetes.io/job-completion-index"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Success" if code < 400 else "Failure",
        "reason": reason,
        "message": message,
        "code": code,
    }


@dataclass
class FakePod:
    """One pod of a Job: its object (as the API lists it) and its process."""

    obj: dict[str, Any]
    popen: subprocess.Popen | None
    log_path: Path
    #: container port -> the host port standing in for it (the same for the Job's pods).
    ports: dict[str, str] = field(default_factory=dict)
    #: The DNS names of the Job's pods (`<hostname>.<subdomain>[.<ns>.svc]`): all 127.0.0.1.
    peers: set[str] = field(default_factory=set)
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    stopped: bool = False

    @property
    def name(self) -> str:
        return self.obj["metadata"]["name"]

    def refresh(self) -> None:
        """Move the pod to Succeeded/Failed once its process exited."""
        status = self.obj["status"]
        if status["phase"] not in ("Pending", "Running") or self.popen is None:
            return
        code = self.popen.poll()
        if code is None:
            return
        exit_code = 128 - code if code < 0 else code
        terminated: dict[str, Any] = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "finishedAt": _now(),
        }
        if exit_code != 0:
            terminated["message"] = self.log_tail()
        status["phase"] = "Succeeded" if exit_code == 0 else "Failed"
        status["containerStatuses"] = [
            {
                "name": self.obj["spec"]["containers"][0]["name"],
                "image": self.obj["spec"]["containers"][0]["image"],
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {"terminated": terminated},
            }
        ]

    def log_tail(self) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        lines = data.decode(errors="replace").splitlines()[-MESSAGE_LINES:]
        return "\n".join(lines).encode()[-MESSAGE_BYTES:].decode(errors="replace")

    def stop(self, grace_s: float) -> None:
        """SIGTERM the pod's process group, SIGKILL it after `grace_s` (a deleted pod)."""
        self.stopped = True
        if self.popen is None or self.popen.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


class FakeCluster:
    """The fake API server and the pods it runs; a context manager (stops everything)."""

    def __init__(
        self,
        root: Path,
        base_env: dict[str, str],
        *,
        claims: dict[str, Path] | None = None,
        grace_s: float = 10.0,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.base_env = dict(base_env)
        self.claims = {k: Path(v) for k, v in (claims or {}).items()}
        self.grace_s = grace_s
        #: (namespace, plural) -> name -> object.
        self.store: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        #: Job uid -> its pods.
        self.pods: dict[str, list[FakePod]] = {}
        #: (method, path) of every request, in order.
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.RLock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    # -------------------------------------------------------------------------------- access

    def kubeconfig(self, path: Path, namespace: str = "distillery") -> Path:
        """A kubeconfig file whose current context is this server."""
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "fake", "user": {"token": "fake"}}],
                    "contexts": [
                        {
                            "name": "fake",
                            "context": {"cluster": "fake", "user": "fake", "namespace": namespace},
                        }
                    ],
                    "current-context": "fake",
                }
            )
        )
        return path

    def put(self, obj: dict[str, Any]) -> None:
        """Seed an object (e.g. the ConfigMap and Secret the pods' `envFrom` name)."""
        plural = next(p for p, (_, kind) in RESOURCES.items() if kind == obj["kind"])
        meta = obj["metadata"]
        with self.lock:
            self.store.setdefault((meta.get("namespace", "distillery"), plural), {})[
                meta["name"]
            ] = obj

    def names(self, plural: str, namespace: str = "distillery") -> list[str]:
        with self.lock:
            return sorted(self.store.get((namespace, plural), {}))

    def job_pods(self, job: str, namespace: str = "distillery") -> list[FakePod]:
        with self.lock:
            obj = self.store.get((namespace, "jobs"), {}).get(job)
            return list(self.pods.get(obj["metadata"]["uid"], [])) if obj else []

    def all_pods(self) -> list[FakePod]:
        with self.lock:
            return [p for pods in self.pods.values() for p in pods]

    def deletes(self) -> list[str]:
        """`<plural>/<name>` of every DELETE request, in order."""
        return [
            "/".join(path.split("?")[0].split("/")[-2:])
            for method, path in self.requests
            if method == "DELETE"
        ]

    def rbac_requests(self) -> set[tuple[str, str, str]]:
        """(API group, resource, verb) of every request, as RBAC authorizes it: what a Role
        must grant the client."""
        verbs = {"POST": "create", "DELETE": "delete", "PUT": "update", "PATCH": "patch"}
        found = set()
        for method, url in self.requests:
            m = PATH.match(urlparse(url).path)
            if m is None:
                continue
            verb = verbs.get(method) or ("get" if m["name"] else "list")
            group = "batch" if m["api"] == "/apis/batch/v1" else ""
            found.add((group, m["plural"] + ("/status" if m["status"] else ""), verb))
        return found

    # ------------------------------------------------------------------------------ the API

    def handle(self, method: str, url: str, body: dict[str, Any] | None) -> tuple[int, Any]:
        self.requests.append((method, url))
        parsed = urlparse(url)
        m = PATH.match(parsed.path)
        if m is None or m["plural"] not in RESOURCES:
            return 404, _status(404, "NotFound", f"the server could not find {parsed.path}")
        ns, plural, name = m["ns"], m["plural"], m["name"]
        kind = RESOURCES[plural][1]
        with self.lock:
            self._refresh()
            objects = self.store.setdefault((ns, plural), {})
            if method == "POST" and name is None and body is not None:
                return self._create(ns, plural, objects, body)
            if method == "GET" and name is None:
                selector = parse_qs(parsed.query).get("labelSelector", [""])[0]
                items = [o for o in objects.values() if _selects(selector, o)]
                return 200, {"apiVersion": "v1", "kind": f"{kind}List", "items": items}
            if name not in objects:
                return 404, _status(404, "NotFound", f'{plural} "{name}" not found')
            if method == "GET":
                return 200, objects[name]
            if method == "DELETE":
                obj = objects.pop(name)
                if plural == "jobs":
                    self._stop_pods(obj, ns)
                    return 200, _status(200, "", "")
                return 200, obj
        return 405, _status(405, "MethodNotAllowed", f"{method} {parsed.path}")

    def _create(
        self, ns: str, plural: str, objects: dict[str, Any], body: dict[str, Any]
    ) -> tuple[int, Any]:
        meta = body.setdefault("metadata", {})
        name = meta["name"]
        if name in objects:
            return 409, _status(409, "AlreadyExists", f'{plural} "{name}" already exists')
        meta.update(namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=_now())
        objects[name] = body
        if plural == "jobs":
            body["status"] = {"startTime": _now()}
            self._start_pods(body, ns)
        return 201, body

    # -------------------------------------------------------------------------------- kubelet

    def _start_pods(self, job: dict[str, Any], ns: str) -> None:
        name, spec = job["metadata"]["name"], job["spec"]
        template = spec["template"]
        container = template["spec"]["containers"][0]
        ports = {str(p["containerPort"]): str(free_port()) for p in container.get("ports", [])}
        peers = set()
        subdomain = template["spec"].get("subdomain")
        for index in range(spec.get("completions", 1)) if subdomain else ():
            host = f"{name}-{index}.{subdomain}"
            peers |= {host, f"{host}.{ns}", f"{host}.{ns}.svc", f"{host}.{ns}.svc.cluster.local"}
        pods = []
        for index in range(spec.get("completions", 1)):
            pod_name = f"{name}-{index}-{uuid.uuid4().hex[:5]}"
            labels = dict(template["metadata"].get("labels", {}))
            labels |= {"job-name": name, INDEX_KEY: str(index)}
            obj = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": pod_name,
                    "namespace": ns,
                    "uid": str(uuid.uuid4()),
                    "labels": labels,
                    "annotations": {INDEX_KEY: str(index)},
                    "creationTimestamp": _now(),
                },
                "spec": {**template["spec"], "hostname": f"{name}-{index}"},
                "status": {"phase": "Pending"},
            }
            pod = FakePod(obj, None, self.root / f"{pod_name}.log", ports=ports, peers=peers)
            self._try_start(pod)
            pods.append(pod)
            self.store.setdefault((ns, "pods"), {})[pod_name] = obj
        self.pods[job["metadata"]["uid"]] = pods

    def _try_start(self, pod: FakePod) -> None:
        """Start a pending pod's process once what it mounts and reads exists (as the kubelet
        retries: a missing ConfigMap keeps the pod Pending)."""
        obj = pod.obj
        meta, spec = obj["metadata"], obj["spec"]
        ns = meta["namespace"]
        container = spec["containers"][0]
        pod_dir = self.root / meta["name"]
        pod_dir.mkdir(parents=True, exist_ok=True)
        try:
            env = self._pod_env(obj, ns)
            mounts = self._mounts(spec, container, ns, pod_dir)
        except LookupError as e:
            obj["status"]["message"] = f"CreateContainerConfigError: {e}"
            return
        hosts = {spec["hostname"]} | pod.peers
        argv = []
        for arg in [*container.get("command", []), *container.get("args", [])]:
            arg = _expand(arg, env)
            if arg in hosts:
                arg = "127.0.0.1"
            elif arg in pod.ports:
                arg = pod.ports[arg]
            for mount_path, host in mounts.items():
                if arg == mount_path or arg.startswith(mount_path + "/"):
                    arg = str(host) + arg[len(mount_path) :]
                    break
            argv.append(arg)
        with pod.log_path.open("wb") as log:
            pod.popen = subprocess.Popen(
                argv,
                cwd=pod_dir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        pod.argv, pod.env = argv, env
        obj["status"] = {"phase": "Running", "startTime": _now(), "podIP": "127.0.0.1"}

    def _pod_env(self, obj: dict[str, Any], ns: str) -> dict[str, str]:
        container = obj["spec"]["containers"][0]
        env = dict(self.base_env)
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                env |= self._lookup(ns, "configmaps", source["configMapRef"]["name"]).get(
                    "data", {}
                )
            elif "secretRef" in source:
                secret = self._lookup(ns, "secrets", source["secretRef"]["name"])
                env |= {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
                env |= secret.get("stringData", {})
        index = obj["metadata"]["annotations"][INDEX_KEY]
        env["JOB_COMPLETION_INDEX"] = index
        env["HOSTNAME"] = obj["spec"]["hostname"]
        fields = {
            f"metadata.annotations['{INDEX_KEY}']": index,
            "metadata.name": obj["metadata"]["name"],
            "metadata.namespace": ns,
        }
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = _expand(var["value"], env)
            elif "fieldRef" in var.get("valueFrom", {}):
                env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
        return env

    def _mounts(
        self, spec: dict[str, Any], container: dict[str, Any], ns: str, pod_dir: Path
    ) -> dict[str, Path]:
        """mount path -> host folder, for each of the container's volume mounts."""
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounts = {}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            host = pod_dir / "volumes" / mount["name"]
            if "configMap" in volume:
                config_map = self._lookup(ns, "configmaps", volume["configMap"]["name"])
                host.mkdir(parents=True, exist_ok=True)
                for key, value in config_map.get("data", {}).items():
                    (host / key).write_text(value)
            elif "persistentVolumeClaim" in volume:
                host = self.claims[volume["persistentVolumeClaim"]["claimName"]]
            else:  # emptyDir
                host.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"].rstrip("/")] = host
        return mounts

    def _lookup(self, ns: str, plural: str, name: str) -> dict[str, Any]:
        obj = self.store.get((ns, plural), {}).get(name)
        if obj is None:
            raise LookupError(f'{plural} "{name}" not found')
        return obj

    # ----------------------------------------------------------------------------- job status

    def _refresh(self) -> None:
        """Pods from their processes, then each Job's status from its pods (under the lock)."""
        for (_ns, plural), jobs in list(self.store.items()):
            if plural != "jobs":
                continue
            for job in jobs.values():
                pods = self.pods.get(job["metadata"]["uid"], [])
                for pod in pods:
                    if pod.popen is None and not pod.stopped:
                        self._try_start(pod)
                    pod.refresh()
                self._job_status(job, pods)

    def _job_status(self, job: dict[str, Any], pods: list[FakePod]) -> None:
        status = job["status"]
        if any(c["status"] == "True" for c in status.get("conditions", [])):
            return
        phases = [p.obj["status"]["phase"] for p in pods]
        status.update(
            active=sum(ph in ("Pending", "Running") for ph in phases),
            succeeded=phases.count("Succeeded"),
            failed=phases.count("Failed"),
        )
        if status["failed"] > job["spec"].get("backoffLimit", 6):
            for pod in pods:
                pod.stop(self.grace_s)
                pod.refresh()
            status["active"] = 0
            status["conditions"] = [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit",
                    "lastTransitionTime": _now(),
                }
            ]
        elif status["succeeded"] == job["spec"].get("completions", 1):
            status["completionTime"] = _now()
            status["conditions"] = [
                {"type": "Complete", "status": "True", "lastTransitionTime": _now()}
            ]

    def _stop_pods(self, job: dict[str, Any], ns: str) -> None:
        for pod in self.pods.get(job["metadata"]["uid"], []):
            pod.stop(self.grace_s)
            self.store.get((ns, "pods"), {}).pop(pod.name, None)

    # -------------------------------------------------------------------------------- closing

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        for pod in self.all_pods():
            pod.stop(2.0)

    def __enter__(self) -> FakeCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion (an unknown variable stays as written)."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), text)


def _selects(selector: str, obj: dict[str, Any]) -> bool:
    """An equality-based label selector (`a=b,c=d`)."""
    labels = obj.get("metadata", {}).get("labels", {})
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key.strip()) != value.strip().lstrip("="):
            return False
    return True


def _handler(cluster: FakeCluster) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            code, payload = cluster.handle(self.command, self.path, body)
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, *args: object) -> None:  # quiet
            pass

    return Handler
