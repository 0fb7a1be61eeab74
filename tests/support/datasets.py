"""Waiting for a dataset's check (POST /datasets answers 202 `checking`; a checker on the cpu
queue ends it `ready` or `invalid`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

#: Seconds a check of the tests' small datasets may take on a busy machine (a checker process
#: imports the data code for each check).
CHECK_TIMEOUT_S = 180.0


def wait_checked(
    get: Callable[[str], Any], dataset_id: str, timeout_s: float = CHECK_TIMEOUT_S
) -> dict[str, Any]:
    """Poll `get(f"/datasets/{dataset_id}")` (an httpx-like call returning a response) until the
    dataset is no longer `checking`; returns its JSON. `TimeoutError` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        r = get(f"/datasets/{dataset_id}")
        assert r.status_code == 200, r.text
        ds = r.json()
        if ds["status"] != "checking":
            return ds
        if time.monotonic() > deadline:
            raise TimeoutError(f"dataset {dataset_id} still checking after {timeout_s:.0f} s")
        time.sleep(0.2)
