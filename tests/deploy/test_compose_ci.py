"""The CI override (tests/deploy/compose.ci.yml) changes only what must differ on a machine with
podman, no registry and its own Postgres/Redis, and its loopback ports agree with each other."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from .manifests import COMPOSE_FILE, ROOT, as_argv, option
from .test_container_e2e import GATEWAY, OVERRIDE

#: What the override may set on a service of docker-compose.yml.
ALLOWED = {
    "image",
    "network_mode",
    "hostname",
    "environment",
    "command",
    "entrypoint",
    "ports",
    "healthcheck",
    "deploy",
}


class Reset:
    """`!reset` (compose spec): clear the base file's value."""


class Override:
    """`!override` (compose spec): replace the base file's value instead of merging."""

    def __init__(self, value: Any) -> None:
        self.value = value


class ComposeLoader(yaml.SafeLoader):
    """safe_load plus the compose spec's two merge tags (neither runs code)."""


ComposeLoader.add_constructor("!reset", lambda loader, node: Reset())
ComposeLoader.add_constructor(
    "!override", lambda loader, node: Override(loader.construct_sequence(node, deep=True))
)


@pytest.fixture(scope="module")
def override() -> dict[str, Any]:
    return yaml.load(OVERRIDE.read_text(), Loader=ComposeLoader)  # a SafeLoader subclass


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def test_only_existing_services_and_allowed_keys(override, base):
    assert set(override["services"]) <= set(base["services"])
    for name, svc in override["services"].items():
        assert set(svc) <= ALLOWED, (name, set(svc) - ALLOWED)
        assert svc["network_mode"] == "host", name
    # The production file keeps MinIO and the GPU reservation; only the override drops them.
    assert base["services"]["minio"]["image"].startswith("minio/")
    for name in ("worker", "profiler"):
        assert "devices" in base["services"][name]["deploy"]["resources"]["reservations"]
        assert isinstance(override["services"][name]["deploy"], Reset)


def test_loopback_ports_agree(override):
    services = override["services"]
    env = services["gateway"]["environment"]
    db = urlsplit(env["DISTILLERY_DATABASE_URL"])
    assert db.hostname == "127.0.0.1" and db.port != 5432  # not the machine's own Postgres
    assert str(db.port) == services["postgres"]["environment"]["PGPORT"]
    broker = urlsplit(env["DISTILLERY_BROKER_URL"])
    assert broker.port != 6379 and str(broker.port) == option(
        services["redis"]["command"], "--port"
    )
    s3_host, s3_port = env["DISTILLERY_S3_ENDPOINT"].split(":")
    assert s3_port == services["minio"]["environment"]["S3_PORT"]
    assert env["DISTILLERY_S3_PUBLIC_ENDPOINT"] == env["DISTILLERY_S3_ENDPOINT"]
    argv = as_argv(services["gateway"]["command"])
    assert f"http://127.0.0.1:{option(argv, '--port')}" == GATEWAY
    for name in ("reconciler", "worker", "profiler", "createbuckets"):
        assert services[name]["environment"]["DISTILLERY_DATABASE_URL"] == db.geturl(), name
    # Health checks, were they run, would probe these ports too.
    tests = {
        n: " ".join(s["healthcheck"]["test"].value)
        for n, s in services.items()
        if "healthcheck" in s
    }
    assert str(db.port) in tests["postgres"] and str(broker.port) in tests["redis"]
    assert s3_port in tests["minio"] and option(argv, "--port") in tests["gateway"]


def test_every_process_that_holds_stages_has_its_own_hostname(override):
    names = [
        override["services"][n].get("hostname")
        for n in ("gateway", "reconciler", "worker", "profiler", "checker")
    ]
    assert None not in names and len(set(names)) == len(names)


def test_ci_images_exist_as_dockerfiles(override):
    for name in ("postgres", "redis", "minio"):
        image = override["services"][name]["image"]
        short = image.split("/")[-1].split(":")[0].removeprefix("ci-")
        assert (ROOT / "tests/deploy/images" / f"{short}.Dockerfile").is_file(), image
