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


def test_gateway_imports_no_torch() -> None:
    r = _run(
        "import sys\n"
        "import services.gateway.main, services.worker.app, services.profiler.app\n"
        "print('torch' in sys.modules)\n"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


@pytest.mark.skipif(shutil.which("lint-imports") is None, reason="import-linter not installed")
def test_import_contracts_hold() -> None:
    r = subprocess.run(["lint-imports"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "BROKEN" not in r.stdout
