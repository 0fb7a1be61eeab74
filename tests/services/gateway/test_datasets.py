"""`/datasets`: upload an archive or register a prefix: 202 `checking`, then a real checker
process on the test's cpu queue ends it `ready` or `invalid`."""

from __future__ import annotations

import io
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from distillery.checking.keys import staged_archive_key
from distillery.s3 import make_storage
from distillery.storage import put_dir
from tests.support.datasets import wait_checked

from .helpers import spec_dict


def tar_gz(folder: Path, top: str | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for p in sorted(folder.iterdir()):
            tf.add(p, arcname=f"{top}/{p.name}" if top else p.name)
    return buf.getvalue()


def zipped(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder).as_posix())
    return buf.getvalue()


def upload(user, data: bytes, name: str = "cs-mini", filename: str = "cs.tar.gz", **form):
    return user.post(
        "/datasets",
        data={"name": name, "format": "cityscapes", **form},
        files={"file": (filename, data, "application/octet-stream")},
    )


def checked(user, response) -> dict:
    """The dataset of a 202 answer, once its check has ended."""
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "checking"
    return wait_checked(user.get, response.json()["id"])


def test_upload_is_accepted_at_once_then_checked_stored_and_usable(
    as_user, settings, cityscapes_dir, start_checker
):
    alice = as_user("alice")
    r = upload(alice, tar_gz(cityscapes_dir, top="cityscapes"))
    assert r.status_code == 202, r.text
    accepted = r.json()
    assert accepted["status"] == "checking" and accepted["stats"] is None
    storage = make_storage(settings, settings.datasets_bucket)
    # Only the archive is stored in the request, at its staging key.
    assert [o.key for o in storage.list("")] == [staged_archive_key(accepted["id"])]
    start_checker()
    ds = wait_checked(alice.get, accepted["id"])
    assert ds["status"] == "ready" and ds["owner"] == "alice" and ds["error"] is None, ds
    assert ds["prefix"] == f"datasets/{ds['id']}"
    assert ds["summary"]["train"]["images"] == 3 and ds["summary"]["val"]["images"] == 2
    stats = ds["stats"]  # class statistics of the training split
    assert stats["split"] == "train" and stats["num_images"] == 3
    assert stats["num_pixels"] == 3 * 32 * 64 and len(stats["class_pixels"]) == 19
    assert abs(sum(stats["pixel_frequency"]) - 1) < 1e-6
    assert 0 < ds["summary"]["check"]["peak_rss_mb"] < settings.check_memory_mb
    keys = [o.key for o in storage.list(ds["prefix"] + "/")]
    assert len(keys) == 11  # 5 images + 5 masks + the generator's marker, native layout kept
    assert f"{ds['prefix']}/gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png" in keys
    assert not storage.exists(staged_archive_key(ds["id"]))  # the staged archive is gone

    listed = as_user("bob").get("/datasets").json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == ds["id"]
    assert as_user("bob").get(f"/datasets/{ds['id']}").json()["stats"] == ds["stats"]
    assert as_user("bob").get("/datasets/nope").status_code == 404

    spec = spec_dict("on-uploaded")
    spec["data"]["train"] = [{"format": "cityscapes", "dataset_id": ds["id"]}]
    assert as_user("bob").post("/experiments", json=spec).status_code == 201


def test_zip_upload(as_user, cityscapes_dir, checker):
    ds = checked(as_user("alice"), upload(as_user("alice"), zipped(cityscapes_dir), "cs.zip"))
    assert ds["status"] == "ready" and ds["summary"]["train"]["images"] == 3


def test_register_by_prefix(as_user, settings, cityscapes_dir, bdd100k_dir, checker):
    storage = make_storage(settings, settings.datasets_bucket)
    put_dir(storage, "shared/cityscapes-mini", cityscapes_dir)
    r = as_user("alice").post(
        "/datasets",
        data={"name": "cs-shared", "format": "cityscapes", "prefix": "shared/cityscapes-mini/"},
    )
    ds = checked(as_user("alice"), r)
    assert ds["prefix"] == "shared/cityscapes-mini" and ds["status"] == "ready"
    # Registering leaves the data where it is.
    assert len(storage.list("shared/cityscapes-mini/")) == 11

    put_dir(storage, "bdd/mini", bdd100k_dir)
    r = as_user("bob").post(
        "/datasets", data={"name": "bdd-mini", "format": "bdd100k", "prefix": "bdd/mini"}
    )
    ds = checked(as_user("bob"), r)
    assert ds["summary"]["val"]["images"] == 2 and ds["stats"]["format"] == "bdd100k"

    r = as_user("alice").post(
        "/datasets", data={"name": "x", "format": "cityscapes", "prefix": "not/there"}
    )
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "prefix"


def test_bad_label_value_rejected_naming_the_file(as_user, settings, cityscapes_dir, checker):
    bad = cityscapes_dir / "gtFine/train/aachen/aachen_000001_000019_gtFine_labelIds.png"
    mask = np.array(Image.open(bad))
    mask[0, 0] = 200  # not a Cityscapes labelId
    Image.fromarray(mask).save(bad)
    ds = checked(as_user("alice"), upload(as_user("alice"), tar_gz(cityscapes_dir), name="broken"))
    assert ds["status"] == "invalid"
    assert (
        f"{ds['prefix']}/gtFine/train/aachen/aachen_000001_000019_gtFine_labelIds.png"
        in (ds["error"])
    )
    assert "200" in ds["error"]
    assert str(settings.work_dir) not in ds["error"]  # named by its place in the bucket
    # It stays listed as invalid with the reason; nothing it wrote stays, nor the archive.
    (listed,) = as_user("alice").get("/datasets").json()["items"]
    assert listed["status"] == "invalid" and "labelIds" in listed["error"]
    storage = make_storage(settings, settings.datasets_bucket)
    assert storage.list("") == []
    # An experiment cannot use it.
    spec = spec_dict("on-broken")
    spec["data"]["val"] = [{"format": "cityscapes", "dataset_id": ds["id"]}]
    r = as_user("alice").post("/experiments", json=spec)
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "data.val.0.dataset_id"


def test_image_without_mask_and_wrong_layout_are_invalid_naming_them(
    as_user, cityscapes_dir, checker
):
    alice = as_user("alice")
    (cityscapes_dir / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png").unlink()
    ds = checked(alice, upload(alice, tar_gz(cityscapes_dir)))
    assert ds["status"] == "invalid"
    assert "lindau_000000_000019_leftImg8bit.png: no mask" in ds["error"]

    ds = checked(alice, upload(alice, tar_gz(cityscapes_dir), **{"format": "bdd100k"}))
    assert ds["status"] == "invalid" and "images/10k/train" in ds["error"]


def test_bad_archives_are_422s_in_the_request(as_user, cityscapes_dir):
    r = upload(as_user("alice"), b"this is not an archive")
    assert r.status_code == 422
    assert r.json()["detail"][0]["field"] == "file" and "archive" in r.json()["detail"][0]["msg"]

    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w:gz") as tf:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    r = upload(as_user("alice"), evil.getvalue())
    assert r.status_code == 422 and "outside" in r.json()["detail"][0]["msg"]


def test_prefix_xor_file(as_user, cityscapes_dir):
    r = as_user("alice").post("/datasets", data={"name": "x", "format": "cityscapes"})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "prefix"
    r = upload(as_user("alice"), tar_gz(cityscapes_dir), prefix="also/this")
    assert r.status_code == 422
    r = upload(as_user("alice"), tar_gz(cityscapes_dir), **{"format": "kitti"})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "format"


def test_broker_down_keeps_the_check_for_the_reconciler(
    settings, make_user, session_factory, cityscapes_dir, start_checker
):
    """The upload is staged and its row stored (Postgres is the truth) with no
    `check_enqueued_at`; once the broker is back, a reconciler pass sends the check and a
    checker ends it ready."""
    from fastapi.testclient import TestClient

    from distillery.db import Dataset
    from services.celery_app import make_celery
    from services.gateway.main import create_app
    from services.worker.reconcile import reconcile_checks
    from tests.support.devstack import free_port

    from .helpers import auth

    token = make_user("alice")
    down = settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    with TestClient(create_app(down)) as c:
        r = c.post(
            "/datasets",
            data={"name": "no-broker", "format": "cityscapes"},
            files={"file": ("cs.tar.gz", tar_gz(cityscapes_dir), "application/gzip")},
            headers=auth(token),
        )
    assert r.status_code == 202 and r.json()["status"] == "checking", r.text
    dataset_id = r.json()["id"]
    with session_factory() as s:
        row = s.get(Dataset, dataset_id)
        assert row.check_enqueued_at is None and row.archive_key == staged_archive_key(dataset_id)
    storage = make_storage(settings, settings.datasets_bucket)
    assert storage.exists(staged_archive_key(dataset_id))

    sent = reconcile_checks(make_celery(settings), session_factory, settings.cpu_queue, 0)
    assert sent == [dataset_id]
    start_checker()
    with TestClient(create_app(settings)) as c:
        ds = wait_checked(lambda path: c.get(path, headers=auth(token)), dataset_id)
    assert ds["status"] == "ready", ds


def test_uploads_wait_for_their_own_threads_and_leave_the_reads_theirs(
    app, client, as_user, cityscapes_dir
):
    """Every upload thread taken: a new upload waits for one, and reads are still served on
    the request threads; once a thread is free the upload is accepted."""
    alice, limiter = as_user("alice"), app.state.gateway.uploads
    holders = [object() for _ in range(int(limiter.total_tokens))]
    for h in holders:
        client.portal.call(limiter.acquire_on_behalf_of, h)
    answer: dict = {}
    data = tar_gz(cityscapes_dir, top="cityscapes")
    waiting = threading.Thread(target=lambda: answer.update(r=upload(alice, data)))
    try:
        waiting.start()
        for _ in range(5):
            assert alice.get("/experiments").status_code == 200
            assert alice.get("/datasets").json()["total"] == 0
        waiting.join(0.5)
        assert waiting.is_alive() and not answer  # still waiting for an upload thread
    finally:
        for h in holders:
            client.portal.call(limiter.release_on_behalf_of, h)
    waiting.join(60)
    assert answer["r"].status_code == 202, answer["r"].text
    assert alice.get("/datasets").json()["total"] == 1
