"""k8s/: the kustomizations render (offline), validate against the Kubernetes schema and agree
with the code's settings, commands and ports."""

from __future__ import annotations

import importlib

import kubernetes_validate
import pytest

from distillery.settings import Settings

from .manifests import (
    CRD_SCHEMAS,
    K8S,
    K8S_VERSION,
    OVERLAYS,
    as_argv,
    celery_app_module,
    kubectl_kustomize,
    option,
    render_kustomization,
    settings_env_names,
    settings_from_env,
    validate_custom_resource,
)

DEFAULTS = Settings(_env_file=None)
WORKERS = {
    "gpu-worker": ("services.worker.app", "gpu_queue"),
    "profiler-worker": ("services.profiler.app", "profiler_queue"),
}


def _by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _pod(doc):
    return doc["spec"]["template"]["spec"]


def _resolve_port(container, port):
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container.get("ports", []) if p.get("name") == port)


def test_overlays_exist():
    assert {p.name for p in OVERLAYS} >= {"dev", "production"}


@pytest.mark.parametrize("overlay", [p.name for p in OVERLAYS] + ["base"])
def test_renderer_matches_kubectl_kustomize_when_installed(rendered, overlay):
    path = K8S / "base" if overlay == "base" else K8S / "overlays" / overlay
    reference = kubectl_kustomize(path)
    if reference is None:
        pytest.skip("kubectl is not installed; the offline renderer is checked by the other tests")
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(rendered[overlay], key=key) == sorted(reference, key=key)


@pytest.mark.parametrize("overlay", [p.name for p in OVERLAYS] + ["base"])
def test_manifests_validate_against_the_kubernetes_schema(rendered, overlay):
    assert rendered[overlay]
    for doc in rendered[overlay]:
        if (doc["apiVersion"], doc["kind"]) in CRD_SCHEMAS:
            validate_custom_resource(doc)  # KEDA's ScaledObject (test_autoscaling.py)
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {e.message}")


@pytest.mark.parametrize("overlay", [p.name for p in OVERLAYS])
def test_every_distillery_variable_is_a_settings_field(rendered, overlay):
    known = settings_env_names()
    env: dict[str, str] = {}
    for doc in rendered[overlay]:
        if doc["kind"] == "ConfigMap":
            env |= doc.get("data", {})
        elif doc["kind"] == "Secret":
            env |= doc.get("stringData", {})
        elif "template" in doc.get("spec", {}):
            for c in _pod(doc)["containers"]:
                env |= {e["name"]: e.get("value", "") for e in c.get("env", [])}
    names = {k for k in env if k.startswith("DISTILLERY_")}
    assert names, "no DISTILLERY_* settings found"
    assert names <= known, f"not fields of Settings: {sorted(names - known)}"
    settings_from_env(env)  # and every value parses


@pytest.mark.parametrize("overlay", [p.name for p in OVERLAYS])
def test_references_resolve(rendered, overlay):
    docs = rendered[overlay]
    configmaps, secrets = _by_kind(docs, "ConfigMap"), _by_kind(docs, "Secret")
    pvcs = _by_kind(docs, "PersistentVolumeClaim")
    external_secrets = {"distillery-secrets"} if overlay == "production" else set()
    templates = []
    for doc in docs:
        if "template" not in doc.get("spec", {}):
            continue
        pod = _pod(doc)
        templates.append(doc["spec"]["template"]["metadata"]["labels"])
        if "selector" in doc["spec"] and doc["kind"] != "Job":
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items()
        for c in pod["containers"]:
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    assert src["configMapRef"]["name"] in configmaps
                if "secretRef" in src:
                    assert src["secretRef"]["name"] in set(secrets) | external_secrets
        for vol in pod.get("volumes", []):
            if "persistentVolumeClaim" in vol:
                assert vol["persistentVolumeClaim"]["claimName"] in pvcs
    for svc in _by_kind(docs, "Service").values():
        sel = svc["spec"]["selector"]
        assert any(sel.items() <= t.items() for t in templates), f"service {svc['metadata']}"


@pytest.mark.parametrize("overlay", [p.name for p in OVERLAYS])
def test_gateway_port_probes_and_service_agree(rendered, overlay):
    docs = rendered[overlay]
    gateway = _by_kind(docs, "Deployment")["gateway"]
    (c,) = _pod(gateway)["containers"]
    argv = as_argv(c["command"])
    assert argv[0] == "uvicorn"
    module, _, attr = argv[1].partition(":")
    assert getattr(importlib.import_module(module), attr) is not None
    port = int(option(argv, "--port"))
    assert [p["containerPort"] for p in c["ports"]] == [port]
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    for probe in ("readinessProbe", "livenessProbe"):
        assert _resolve_port(c, c[probe]["httpGet"]["port"]) == port
    svc = _by_kind(docs, "Service")["gateway"]
    assert [_resolve_port(c, p["targetPort"]) for p in svc["spec"]["ports"]] == [port]


@pytest.mark.parametrize("overlay", [p.name for p in OVERLAYS])
@pytest.mark.parametrize("name", sorted(WORKERS))
def test_workers_get_a_gpu_probe_and_the_right_queue(rendered, overlay, name):
    module, queue_field = WORKERS[name]
    deployment = _by_kind(rendered[overlay], "Deployment")[name]
    pod = _pod(deployment)
    (c,) = pod["containers"]
    argv = as_argv(c["command"])
    assert celery_app_module(argv) == module
    importlib.import_module(module)
    assert option(argv, "-Q", "--queues") == getattr(DEFAULTS, queue_field)
    assert option(argv, "-c", "--concurrency") == "1"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    probe = " ".join(c["livenessProbe"]["exec"]["command"])
    node = option(argv, "-n", "--hostname").split("@")[0]
    assert f"celery -A {module} inspect ping -d {node}@$HOSTNAME" in probe


@pytest.mark.parametrize("overlay", [p.name for p in OVERLAYS])
def test_the_cpu_worker_checks_datasets_without_a_gpu(rendered, overlay):
    """The dataset checker: the worker image, the checker's app on the `cpu` queue, one check
    at a time, no GPU, a memory limit above the check's own, /work where settings point."""
    docs = rendered[overlay]
    config = _by_kind(docs, "ConfigMap")["distillery-config"]["data"]
    settings = settings_from_env(config)
    pod = _pod(_by_kind(docs, "Deployment")["cpu-worker"])
    (c,) = pod["containers"]
    argv = as_argv(c["command"])
    assert celery_app_module(argv) == "services.worker.checker"
    assert option(argv, "-Q", "--queues") == settings.cpu_queue == DEFAULTS.cpu_queue
    assert option(argv, "-c", "--concurrency") == "1"
    assert c["image"].split(":")[0].endswith("distillery/worker")
    assert "nodeSelector" not in pod and "nvidia.com/gpu" not in c["resources"]["limits"]
    limit = c["resources"]["limits"]["memory"]
    limit_mb = int(limit.removesuffix("Gi")) * 1024 if limit.endswith("Gi") else int(limit[:-2])
    assert limit_mb > settings.check_memory_mb
    assert settings.work_dir.as_posix() in {m["mountPath"] for m in c["volumeMounts"]}
    probe = " ".join(c["livenessProbe"]["exec"]["command"])
    assert "celery -A services.worker.checker inspect ping -d checker@$HOSTNAME" in probe


def test_the_gateway_keeps_no_dataset_cache(rendered):
    (c,) = _pod(_by_kind(rendered["dev"], "Deployment")["gateway"])["containers"]
    assert [m["mountPath"] for m in c["volumeMounts"]] == ["/work"]


def test_gpu_worker_mounts_the_dataset_cache_where_settings_point(rendered):
    docs = rendered["dev"]
    config = _by_kind(docs, "ConfigMap")["distillery-config"]["data"]
    (c,) = _pod(_by_kind(docs, "Deployment")["gpu-worker"])["containers"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts[config["DISTILLERY_CACHE_DIR"]] == "dataset-cache"
    assert config["DISTILLERY_WORK_DIR"] in mounts


@pytest.mark.parametrize("overlay", [p.name for p in OVERLAYS])
def test_both_workers_run_the_worker_image(rendered, overlay):
    """One image for the GPU and the profiler worker; only their commands differ."""
    deployments = _by_kind(rendered[overlay], "Deployment")
    images = {name: _pod(deployments[name])["containers"][0]["image"] for name in WORKERS}
    assert len(set(images.values())) == 1, images
    assert images["gpu-worker"].split(":")[0].endswith("distillery/worker")


def test_images_match_the_compose_images(rendered, compose):
    built = {s["image"].split(":")[0] for s in compose["services"].values() if "build" in s}
    used = {
        c["image"].split(":")[0]
        for d in rendered["dev"]
        if "template" in d.get("spec", {})
        for c in _pod(d)["containers"]
        if c["image"].startswith("distillery/")
    }
    assert used == built


def test_dev_overlay_brings_its_dependencies(rendered):
    docs = rendered["dev"]
    services = _by_kind(docs, "Service")
    assert {"postgres", "redis", "minio", "gateway"} <= set(services)
    config = _by_kind(docs, "ConfigMap")["distillery-config"]["data"]
    secret = _by_kind(docs, "Secret")["distillery-secrets"]["stringData"]
    settings = settings_from_env(config | secret)
    assert settings.broker_url.startswith("redis://redis:6379")
    assert settings.s3_endpoint == f"minio:{services['minio']['spec']['ports'][0]['port']}"
    assert "@postgres:5432/" in settings.database_url
    assert all(
        d["metadata"].get("namespace") == "distillery" for d in docs if d["kind"] != "Namespace"
    )


def test_production_overlay_scales_workers_and_points_outside(rendered):
    docs = rendered["production"]
    assert _by_kind(docs, "ScaledObject")["gpu-worker"]["spec"]["maxReplicaCount"] > 1
    assert "postgres" not in _by_kind(docs, "Service")
    assert "distillery-secrets" not in _by_kind(docs, "Secret")
    config = _by_kind(docs, "ConfigMap")["distillery-config"]["data"]
    assert config["DISTILLERY_S3_SECURE"] == "true"


def test_renderer_rejects_unknown_kustomize_features(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\nconfigMapGenerator: []\n")
    with pytest.raises(ValueError, match="configMapGenerator"):
        render_kustomization(tmp_path)
