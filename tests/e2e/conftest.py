"""The end-to-end tests reuse the real-server fixtures of tests/services (Postgres schema, Redis
queues, S3 buckets, settings, users, the uvicorn gateway) and the worker-process fixtures of
tests/services/worker. Those conftests only reach their own folders, so their fixtures are
loaded here by path (hooks excluded)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


for _module in (
    _load("distillery_test_servers", TESTS / "services" / "conftest.py"),
    _load("distillery_test_workers", TESTS / "services" / "worker" / "conftest.py"),
):
    for _name, _obj in vars(_module).items():
        if not _name.startswith(("_", "pytest_")) and _name not in globals():
            globals()[_name] = _obj


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.services)
            item.add_marker(pytest.mark.slow)
