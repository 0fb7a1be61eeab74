"""The Dockerfiles: bases, what they copy, and commands that name modules which exist."""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .manifests import (
    ROOT,
    as_argv,
    celery_app_module,
    dockerfile_instructions,
    option,
    settings_env_names,
    settings_from_env,
)

#: One image for the gateway (no torch) and one for the Celery workers (CUDA torch): the profiler
#: worker and the dataset checker run the worker image with their own commands.
DOCKERFILES = {
    "gateway": ROOT / "services/gateway/Dockerfile",
    "worker": ROOT / "services/worker/Dockerfile",
}


def _ignored(pattern_lines: list[str], path: str) -> bool:
    return any(
        Path(path).match(p) or path == p or path.startswith(p.rstrip("/") + "/")
        for p in pattern_lines
    )


@pytest.mark.parametrize("service", sorted(DOCKERFILES))
def test_dockerfile_copies_what_exists_and_is_not_ignored(service):
    instructions = dockerfile_instructions(DOCKERFILES[service])
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copies = [shlex.split(args) for instr, args in instructions if instr == "COPY"]
    assert copies
    for args in copies:
        for src in args[:-1]:
            assert (ROOT / src).exists(), f"{service}: COPY {src} but {src} is not in the repo"
            assert not _ignored(ignore, src), f"{service}: COPY {src} but .dockerignore drops it"
    assert any(a[0] == "pyproject.toml" for a in copies)


def test_only_the_gateway_and_the_worker_have_a_dockerfile():
    assert sorted(ROOT.glob("services/*/Dockerfile")) == sorted(DOCKERFILES.values())


def base_image_default(path: Path) -> str | None:
    """The default of `ARG BASE_IMAGE=...` before the first FROM (None without a default)."""
    for instr, args in dockerfile_instructions(path):
        if instr == "FROM":
            break
        if instr == "ARG" and args.startswith("BASE_IMAGE"):
            return args.partition("=")[2] or None
    return None


CI_DOCKERFILES = sorted((ROOT / "tests/deploy/images").glob("*.Dockerfile"))


@pytest.mark.parametrize(
    "path", [*DOCKERFILES.values(), *CI_DOCKERFILES], ids=lambda p: p.parent.name + "/" + p.name
)
def test_every_image_takes_its_base_as_a_build_argument(path):
    """Air-gapped clusters build from a mirror registry: the base is `--build-arg BASE_IMAGE`."""
    instructions = dockerfile_instructions(path)
    froms = [args for instr, args in instructions if instr == "FROM"]
    assert froms == ["${BASE_IMAGE}"], froms
    before = instructions[: [i for i, _ in instructions].index("FROM")]
    assert ("ARG", "BASE_IMAGE") in [(i, a.partition("=")[0]) for i, a in before]


def _torch_pin() -> tuple[tuple[int, ...], tuple[int, ...]]:
    pyproject = (ROOT / "pyproject.toml").read_text()
    low, high = re.search(r'"torch>=([\d.]+),<([\d.]+)"', pyproject).groups()
    return tuple(map(int, low.split("."))), tuple(map(int, high.split(".")))


def test_workers_build_on_a_cuda_pytorch_image():
    image = base_image_default(DOCKERFILES["worker"])
    assert image is not None
    assert re.fullmatch(r"pytorch/pytorch:2\.\d+\.\d+-cuda1[2-9]\.\d+-cudnn\d+-runtime", image)
    # The base's torch must satisfy the project's pin, or pip would replace it with a CPU wheel.
    torch_version = tuple(int(x) for x in image.split(":")[1].split("-")[0].split("."))
    low, high = _torch_pin()
    assert low <= torch_version < high


def test_gateway_image_installs_no_torch():
    """The gateway validates specs and stages uploads but never trains nor checks a dataset:
    its requirements leave torch out, the project goes in with --no-deps, there is no torch
    build argument, and the build itself asserts that the app imports without torch and that
    torch is not installed. scripts/build_images.sh passes it no torch either."""
    assert base_image_default(DOCKERFILES["gateway"]) == "python:3.11-slim"
    args = [a for i, a in dockerfile_instructions(DOCKERFILES["gateway"]) if i == "ARG"]
    assert not any("TORCH" in a for a in args), args
    runs = " ".join(a for i, a in dockerfile_instructions(DOCKERFILES["gateway"]) if i == "RUN")
    assert "torch==" not in runs and "TORCH_REQUIREMENT" not in runs
    assert '! python -c "import torch"' in runs
    build = (ROOT / "scripts/build_images.sh").read_text()
    gateway_build = re.search(r"^\s*gateway\)(.*)$", build, re.M).group(1)
    assert "TORCH" not in gateway_build, gateway_build
    worker_build = re.search(r"^\s*worker\)(.*)$", build, re.M).group(1)
    assert "TORCH_REQUIREMENT" in worker_build  # the checker runs the worker image
    assert "pip install --no-deps ." in runs
    command = re.search(r"python (scripts/requirements\.py[^>]*)>", runs).group(1)
    out = subprocess.run(
        [sys.executable, *shlex.split(command)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    names = {re.match(r"[\w.-]+", line).group(0).lower() for line in out.stdout.splitlines()}
    assert not names & {"torch", "accelerate", "kubernetes"}
    assert {"fastapi", "celery", "pydantic", "sqlalchemy"} <= names


def test_worker_image_installs_what_the_profiler_worker_needs():
    """The profiler worker runs this image: it needs the `onnx` extra (the ONNX Runtime variant)
    next to `platform` (Celery), and its Celery app must be in the image."""
    runs = " ".join(a for i, a in dockerfile_instructions(DOCKERFILES["worker"]) if i == "RUN")
    command = re.search(r"python (scripts/requirements\.py[^>]*)>", runs).group(1)
    extras = set(re.findall(r"--extra (\w+)", command))
    assert "pip install --no-deps ." in runs
    assert {"platform", "onnx"} <= extras
    copied = {
        shlex.split(a)[0] for i, a in dockerfile_instructions(DOCKERFILES["worker"]) if i == "COPY"
    }
    assert "services" in copied
    importlib.import_module("services.profiler.app")


@pytest.mark.parametrize("service", sorted(DOCKERFILES))
def test_cmd_names_modules_that_import(service):
    cmds = [a for i, a in dockerfile_instructions(DOCKERFILES[service]) if i == "CMD"]
    argv = as_argv(yaml.safe_load(cmds[-1]))
    if argv[0] == "uvicorn":
        module, _, attr = argv[1].partition(":")
        assert getattr(importlib.import_module(module), attr) is not None
        assert option(argv, "--host") == "0.0.0.0"
        exposed = [a for i, a in dockerfile_instructions(DOCKERFILES[service]) if i == "EXPOSE"]
        assert exposed == [option(argv, "--port")]
    else:
        assert argv[0] == "celery"
        importlib.import_module(celery_app_module(argv))


@pytest.mark.parametrize(
    ("module", "task"),
    [
        ("services.worker.app", "distillery.run_stage"),
        ("services.profiler.app", "distillery.run_stage"),
        ("services.worker.checker", "distillery.check_dataset"),
    ],
)
def test_worker_parent_process_never_imports_torch(module, task):
    """The prefork parent must not touch CUDA: its app and task modules import no torch (the
    checker's neither: only each check's child process imports the data code)."""
    code = (
        f"import sys, {module} as m; m.app.loader.import_default_modules(); "
        f"assert {task!r} in m.app.tasks; "
        "print(sorted(k for k in sys.modules if k == 'torch' or k.startswith('torch.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"torch imported at module level: {out.stdout[:300]}"


@pytest.mark.parametrize("service", sorted(DOCKERFILES))
def test_env_settings_are_settings_fields(service):
    env: dict[str, str] = {}
    for instr, args in dockerfile_instructions(DOCKERFILES[service]):
        if instr == "ENV":
            env |= dict(pair.split("=", 1) for pair in shlex.split(args))
    names = {k for k in env if k.startswith("DISTILLERY_")}
    assert names <= settings_env_names(), names - settings_env_names()
    settings_from_env(env)
    # The image creates those folders for its non-root user.
    runs = " ".join(a for i, a in dockerfile_instructions(DOCKERFILES[service]) if i == "RUN")
    assert env["DISTILLERY_CACHE_DIR"] in runs and env["DISTILLERY_WORK_DIR"] in runs
