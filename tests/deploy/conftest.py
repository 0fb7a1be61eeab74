"""Fixtures of the deployment checks (helpers in `manifests.py`)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from .manifests import COMPOSE_FILE, K8S, OVERLAYS, render_kustomization


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Overlay name -> rendered manifests (plus `base`)."""
    out = {p.name: render_kustomization(p) for p in OVERLAYS}
    out["base"] = render_kustomization(K8S / "base")
    return out
