"""Queue-driven autoscaling of the GPU workers (k8s/overlays/production/gpu-worker-autoscale.yaml):
KEDA's ScaledObject validates against KEDA's CRD schema (vendored in tests/deploy/schemas) and
watches the very Redis list the GPU workers consume."""

from __future__ import annotations

import copy
from urllib.parse import urlsplit

import pytest

from .manifests import as_argv, option, validate_custom_resource


def _one(docs, kind, name):
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


@pytest.fixture
def scaled(rendered):
    return _one(rendered["production"], "ScaledObject", "gpu-worker")


def test_scaled_object_validates_against_kedas_crd_schema(scaled):
    validate_custom_resource(scaled)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda s: s["spec"].update(maxReplicas=4),
            "unknown fields: ScaledObject.spec.maxReplicas",
        ),
        (lambda s: s["spec"].update(minReplicaCount="zero"), "minReplicaCount"),
        (lambda s: s["spec"].pop("scaleTargetRef"), "scaleTargetRef"),
        (lambda s: s["spec"]["triggers"][0].pop("type"), "type"),
    ],
)
def test_the_schema_check_catches_mistakes(scaled, change, message):
    broken = copy.deepcopy(scaled)
    change(broken)
    with pytest.raises(ValueError, match=message):
        validate_custom_resource(broken)


def test_scales_the_gpu_workers_from_zero_on_their_queue(rendered, scaled):
    docs = rendered["production"]
    spec = scaled["spec"]
    assert spec["minReplicaCount"] == 0 and spec["maxReplicaCount"] > 1
    target = spec["scaleTargetRef"]
    deployment = _one(docs, target.get("kind", "Deployment"), target["name"])
    argv = as_argv(deployment["spec"]["template"]["spec"]["containers"][0]["command"])
    config = _one(docs, "ConfigMap", "distillery-config")["data"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "redis"
    meta = trigger["metadata"]
    # The list is the queue the target consumes, on the broker the platform is configured with.
    assert meta["listName"] == option(argv, "-Q", "--queues") == config["DISTILLERY_GPU_QUEUE"]
    broker = urlsplit(config["DISTILLERY_BROKER_URL"])
    assert meta["address"] == f"{broker.hostname}:{broker.port or 6379}"
    assert meta["enableTLS"] == str(broker.scheme == "rediss").lower()
    assert meta["databaseIndex"] == (broker.path.strip("/") or "0")
    assert int(meta["listLength"]) == 1  # a pod per waiting stage (one stage per worker)
    # A busy worker is scaled down only after a long quiet spell (it checkpoints on SIGTERM).
    assert spec["cooldownPeriod"] >= 600
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= 60


def test_dev_overlay_needs_no_keda(rendered):
    assert not [d for d in rendered["dev"] if d["apiVersion"].startswith("keda.sh/")]
