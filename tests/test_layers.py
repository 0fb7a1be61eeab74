"""The layers hold: what the gateway imports needs no torch, and the import contracts pass."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def test_spec_validates_without_torch() -> None:
    r = _run(
        "import sys\n"
        "from distillery.spec import load_spec\n"
        "load_spec('examples/quickstart.yaml'); load_spec('examples/platform.yaml')\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_nothing_under_the_gateway_nor_the_worker_parents_loads_torch() -> None:
    # The gateway image installs no torch: every module of services.gateway, and a built app,
    # must import without it; so must the workers' Celery parents (the GPU worker's and the
    # profiler's pool processes import the engine) and the checker's app and task (only the
    # check's child process imports the data code).
    r = _run(
        "import importlib, pkgutil, sys\n"
        "import services.gateway\n"
        "for m in pkgutil.walk_packages(services.gateway.__path__, 'services.gateway.'):\n"
        "    importlib.import_module(m.name)\n"
        "from services.gateway.main import create_app\n"
        "create_app(migrate_on_start=False)\n"
        "import services.worker.app, services.profiler.app\n"
        "import services.worker.checker, services.worker.checks, services.worker.reconcile\n"
        "import distillery.checking.job\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


@pytest.mark.skipif(shutil.which("lint-imports") is None, reason="import-linter not installed")
def test_import_contracts_hold() -> None:
    r = subprocess.run(["lint-imports"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "BROKEN" not in r.stdout
