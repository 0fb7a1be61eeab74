"""docker-compose.yml parses; its images, commands, variables and ports agree with the code."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import tomllib
from urllib.parse import urlsplit

import pytest
import yaml
from celery import Celery

from distillery.settings import Settings

from .manifests import (
    COMPOSE_FILE,
    ROOT,
    as_argv,
    celery_app_module,
    dockerfile_instructions,
    option,
    settings_env_names,
    settings_from_env,
)

PLATFORM = {
    "postgres",
    "redis",
    "minio",
    "createbuckets",
    "gateway",
    "reconciler",
    "worker",
    "profiler",
    "checker",
    "flower",
}
DEFAULTS = Settings(_env_file=None)


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}


def test_docker_compose_config_accepts_the_file(tmp_path):
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail(
            "docker-compose is not installed; install it with "
            "`apt-get update && apt-get install -y --no-install-recommends docker-compose`"
        )
    out = subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "config"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load(out.stdout)
    assert set(resolved["services"]) == PLATFORM
    # The YAML anchors resolved: every Distillery service got the shared settings.
    for name in ("gateway", "worker", "profiler", "checker", "reconciler", "flower"):
        assert "DISTILLERY_DATABASE_URL" in resolved["services"][name]["environment"], name


def test_platform_services_with_healthchecks_and_named_volumes(compose):
    services = compose["services"]
    assert set(services) == PLATFORM
    for name in ("postgres", "redis", "minio", "gateway", "worker", "profiler", "checker"):
        assert "healthcheck" in services[name], f"{name} has no healthcheck"
    named = set(compose["volumes"])
    used = {
        v.split(":")[0]
        for s in services.values()
        for v in s.get("volumes", [])
        if not v.startswith((".", "/"))
    }
    assert used <= named, f"volumes used but not declared: {used - named}"
    assert {"pgdata", "miniodata", "datasetcache"} <= used


def test_every_distillery_variable_is_a_settings_field_with_a_valid_value(compose):
    known = settings_env_names()
    for name, service in compose["services"].items():
        env = _env(service)
        unknown = {k for k in env if k.startswith("DISTILLERY_")} - known
        assert not unknown, f"{name}: {sorted(unknown)} are not fields of Settings"
        settings_from_env(env)  # every value parses (ints, bools, paths)


def test_urls_point_at_compose_services(compose):
    env = _env(compose["services"]["worker"])
    settings = settings_from_env(env)
    hosts = {
        urlsplit(settings.database_url).hostname,
        urlsplit(settings.broker_url).hostname,
        settings.s3_endpoint.split(":")[0],
    }
    assert hosts <= set(compose["services"]), hosts
    assert urlsplit(settings.database_url).port == 5432
    pg = compose["services"]["postgres"]["environment"]
    assert settings.database_url.endswith(
        f"//{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/{pg['POSTGRES_DB']}"
    )
    minio = compose["services"]["minio"]["environment"]
    assert (settings.s3_access_key, settings.s3_secret_key) == (
        minio["MINIO_ROOT_USER"],
        minio["MINIO_ROOT_PASSWORD"],
    )


def test_createbuckets_makes_the_configured_buckets(compose):
    settings = settings_from_env(_env(compose["services"]["gateway"]))
    script = " ".join(compose["services"]["createbuckets"]["entrypoint"])
    for bucket in (settings.datasets_bucket, settings.artifacts_bucket):
        assert f"local/{bucket}" in script
    deps = compose["services"]["gateway"]["depends_on"]
    assert deps["createbuckets"]["condition"] == "service_completed_successfully"
    assert deps["postgres"]["condition"] == "service_healthy"
    assert deps["redis"]["condition"] == "service_healthy"


@pytest.mark.parametrize(
    ("service", "module", "queue_field"),
    [
        ("worker", "services.worker.app", "gpu_queue"),
        ("profiler", "services.profiler.app", "profiler_queue"),
    ],
)
def test_worker_commands_match_settings_and_import(compose, service, module, queue_field):
    svc = compose["services"][service]
    argv = as_argv(svc["command"])
    assert argv[:1] == ["celery"] and "worker" in argv
    assert celery_app_module(argv) == module
    queue = option(argv, "-Q", "--queues")
    assert queue == getattr(DEFAULTS, queue_field), f"{service} consumes {queue!r}"
    env_queue = _env(svc).get(f"DISTILLERY_{queue_field.upper()}", queue)
    assert env_queue == queue
    assert option(argv, "-c", "--concurrency") == "1"
    app = importlib.import_module(module).app
    assert isinstance(app, Celery)
    # GPU reservation
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    # The healthcheck pings this very worker by its node name.
    node = option(argv, "-n", "--hostname").split("@")[0]
    check = " ".join(svc["healthcheck"]["test"])
    assert f"-A {module} inspect ping -d {node}@" in check


def test_gateway_command_port_and_healthcheck_agree(compose):
    gw = compose["services"]["gateway"]
    argv = as_argv(gw["command"])
    assert argv[0] == "uvicorn"
    module, _, attr = argv[1].partition(":")
    assert getattr(importlib.import_module(module), attr) is not None
    port = option(argv, "--port")
    assert [p.split(":")[-1] for p in gw["ports"]] == [port]
    assert f"127.0.0.1:{port}/ready" in " ".join(gw["healthcheck"]["test"])


def test_the_checker_consumes_the_cpu_queue_without_a_gpu(compose):
    """Dataset checks: the worker image with the checker's Celery app on the `cpu` queue, one
    check at a time, no GPU reservation, and a memory limit above the check's own."""
    svc = compose["services"]["checker"]
    argv = as_argv(svc["command"])
    assert argv[:1] == ["celery"] and "worker" in argv
    assert celery_app_module(argv) == "services.worker.checker"
    settings = settings_from_env(_env(svc))
    assert option(argv, "-Q", "--queues") == settings.cpu_queue == DEFAULTS.cpu_queue
    assert option(argv, "-c", "--concurrency") == "1"
    app = importlib.import_module("services.worker.checker").app
    app.loader.import_default_modules()
    assert "distillery.check_dataset" in app.tasks
    assert app.amqp.router.route({}, "distillery.check_dataset")["queue"].name == settings.cpu_queue
    assert svc["image"] == compose["services"]["worker"]["image"] and "build" not in svc
    assert "deploy" not in svc  # no GPU
    limit_mb = int(svc["mem_limit"].removesuffix("g")) * 1024
    assert limit_mb > settings.check_memory_mb
    node = option(argv, "-n", "--hostname").split("@")[0]
    assert f"-A services.worker.checker inspect ping -d {node}@" in " ".join(
        svc["healthcheck"]["test"]
    )


def test_the_gateway_image_is_built_without_torch(compose):
    assert "args" not in compose["services"]["gateway"]["build"]
    assert "volumes" not in compose["services"]["gateway"]  # it caches no dataset


@pytest.mark.parametrize("service", ["reconciler", "flower"])
def test_helper_services_use_importable_modules(compose, service):
    argv = as_argv(compose["services"][service]["command"])
    module = option(argv, "-m") or celery_app_module(argv)
    assert module is not None
    importlib.import_module(module)
    if "flower" in argv:  # the image that runs it installs the `platform` extra, with flower
        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
            "optional-dependencies"
        ]["platform"]
        assert any(dep.startswith("flower") for dep in extras)


@pytest.mark.parametrize("service", ["gateway", "worker"])
def test_built_images_use_their_dockerfile_and_command(compose, service):
    svc = compose["services"][service]
    dockerfile = ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]
    assert dockerfile.is_file()
    assert svc["image"].startswith("distillery/")
    cmd = [args for instr, args in dockerfile_instructions(dockerfile) if instr == "CMD"]
    assert cmd, f"{dockerfile} has no CMD"
    assert yaml.safe_load(cmd[-1]) == as_argv(svc["command"])


@pytest.mark.parametrize(
    ("service", "image_of"),
    [
        ("profiler", "worker"),
        ("checker", "worker"),
        ("reconciler", "gateway"),
        ("flower", "gateway"),
    ],
)
def test_services_without_a_build_run_a_built_image(compose, service, image_of):
    """The profiler worker and the checker run the worker image (only their commands differ),
    the reconciler and Flower the gateway image."""
    services = compose["services"]
    assert "build" not in services[service]
    assert "build" in services[image_of]
    assert services[service]["image"] == services[image_of]["image"]
