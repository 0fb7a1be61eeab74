"""Dataset checks under faults, with real processes: the gateway (uvicorn), checkers on the
cpu queue (`celery -A services.worker.checker`), the reconciler, Postgres, Redis and S3.

A checker SIGKILLed mid-check (with its pool and the check's child) leaves the dataset
`checking`, held by a dead process; the reconciler sends the check again, a new checker starts
over (removing what the killed attempt left) and the dataset ends ready with nothing extra. A
late duplicate of a finished check changes nothing. The reconciler re-sends a lost message.
"""

from __future__ import annotations

import signal
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from distillery.checking.keys import staged_archive_key
from distillery.data.synthetic import generate_synthetic
from distillery.db import Dataset
from distillery.s3 import make_storage
from services.celery_app import CHECK_DATASET_TASK, make_celery
from services.dispatch import CeleryDispatcher
from services.worker.reconcile import reconcile_checks
from tests.support.datasets import wait_checked


def _archive(tmp_path: Path, train: int, size: tuple[int, int]) -> Path:
    root = tmp_path / "data"
    generate_synthetic(root, "cityscapes", num_train=train, num_val=2, image_size=size, seed=0)
    archive = tmp_path / "data.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for p in sorted(root.iterdir()):
            tf.add(p, arcname=p.name)
    return archive


def _upload(api: httpx.Client, archive: Path) -> str:
    with open(archive, "rb") as f:
        r = api.post(
            "/datasets",
            data={"name": "faults", "format": "cityscapes"},
            files={"file": (archive.name, f, "application/gzip")},
        )
    assert r.status_code == 202, r.text
    return r.json()["id"]


@pytest.fixture
def api(gateway_url, make_user):
    with httpx.Client(
        base_url=gateway_url, headers={"Authorization": f"Bearer {make_user('ana')}"}, timeout=60
    ) as client:
        yield client


def test_a_checker_killed_mid_check_is_replaced_and_the_dataset_ends_ready(
    settings, session_factory, api, start_checker, start_reconciler, poll, tmp_path
):
    archive = _archive(tmp_path, train=24, size=(128, 256))
    first = start_checker()
    dataset_id = _upload(api, archive)

    def holder() -> str | None:
        with session_factory() as s:
            return s.get(Dataset, dataset_id).check_holder

    held_by = poll(holder, 120, "the first checker holds the check", interval_s=0.05)
    poll(lambda: list(settings.work_dir.glob("check-*")), 60, "its work folder", interval_s=0.05)
    first.kill_group(signal.SIGKILL)  # the worker, its pool process and the check's child
    first.popen.wait(30)
    storage = make_storage(settings, settings.datasets_bucket)
    # What a killed upload could leave behind; the next attempt must start over without it.
    leftover = f"datasets/{dataset_id}/leftImg8bit/train/partial.png"
    storage.put_bytes(leftover, b"half an image")
    with session_factory() as s:
        assert s.get(Dataset, dataset_id).status == "checking"

    # A long stale-after: the check is sent again because its holder is a dead process, not
    # because its message looks lost.
    start_reconciler(interval_s=1, stale_after_s=600)
    start_checker()
    ds = wait_checked(api.get, dataset_id)
    assert ds["status"] == "ready", ds
    with session_factory() as s:
        row = s.get(Dataset, dataset_id)
        assert row.check_attempts == 2 and row.check_holder is None, row.check_holder
        assert row.check_holder != held_by
    keys = {o.key for o in storage.list("")}
    assert leftover not in keys and staged_archive_key(dataset_id) not in keys
    # The killed check's unpacked upload is gone from the work folder too.
    assert list(settings.work_dir.glob("check-*")) == []
    assert len(keys) == 2 * (24 + 2) + 1  # images and masks of both splits, and the marker
    assert ds["summary"]["train"]["images"] == 24


def test_a_late_duplicate_changes_nothing(settings, session_factory, api, checker, tmp_path, poll):
    dataset_id = _upload(api, _archive(tmp_path, train=3, size=(32, 64)))
    ds = wait_checked(api.get, dataset_id)
    assert ds["status"] == "ready", ds
    storage = make_storage(settings, settings.datasets_bucket)
    before = sorted(o.key for o in storage.list(""))
    CeleryDispatcher(make_celery(settings)).enqueue_check(dataset_id, settings.cpu_queue)
    poll(lambda: checker.log().count("succeeded in") >= 2, 120, "the duplicate to be consumed")
    assert api.get(f"/datasets/{dataset_id}").json() == ds
    assert sorted(o.key for o in storage.list("")) == before


def test_the_reconciler_sends_a_check_whose_message_was_lost(
    settings, session_factory, celery_messages
):
    app = make_celery(settings)
    with session_factory.begin() as s:
        s.add(
            Dataset(
                id="lost",
                name="lost",
                format="cityscapes",
                prefix="shared/lost",
                status="checking",
                created_at=datetime.now(UTC) - timedelta(seconds=120),
            )
        )
    assert reconcile_checks(app, session_factory, settings.cpu_queue, stale_after_s=60) == ["lost"]
    assert celery_messages(settings.cpu_queue) == [(CHECK_DATASET_TASK, ["lost"])]
    # Its message waits in the queue now: not sent twice, even once it is stale.
    with session_factory.begin() as s:
        s.get(Dataset, "lost").check_enqueued_at = datetime.now(UTC) - timedelta(seconds=120)
    assert reconcile_checks(app, session_factory, settings.cpu_queue, stale_after_s=60) == []
    assert len(celery_messages(settings.cpu_queue)) == 1
