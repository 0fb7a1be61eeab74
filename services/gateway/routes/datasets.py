"""`/datasets`: register a dataset already in the bucket, or upload one as an archive.

Only what is cheap and bounded happens in the request: the upload is streamed to a temporary
file (`BodySizeLimit`: 413 over `max_upload_bytes`), the archive's directory is read under the
archive limits (a bad name, link, count, size, ratio or a truncated archive is a 422 and nothing
is stored), the archive is stored as one object at its staging key, the row is inserted as
`checking` and the check is sent to the `cpu` queue: 202. The check itself (unpacking, decoding
every image, validation, statistics) is a job (`distillery.checking`); poll
`GET /datasets/{id}` until `ready` or `invalid`.
"""

from __future__ import annotations

import shutil
import tempfile
from functools import partial
from pathlib import Path
from typing import Annotated, Literal

from anyio import to_thread
from fastapi import APIRouter, File, Form, HTTPException, Query, UploadFile, status
from fastapi.exceptions import RequestValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from distillery.archive_safety import ArchiveError, verify_archive
from distillery.checking.keys import dataset_prefix, staged_archive_key
from distillery.db import Dataset, User
from distillery.db.models import new_id
from distillery.settings import Settings
from distillery.spec import short
from distillery.storage import Storage
from services.dispatch import enqueue_check
from services.gateway.deps import CurrentUser, GatewayState, ReadDep, StateDep
from services.gateway.schemas import DatasetOut, DatasetPage
from services.gateway.uploads import UPLOADS, is_upload_prefix, removed_on_error, upload_limits

router = APIRouter(prefix="/datasets", tags=["datasets"])


def dataset_out(ds: Dataset) -> DatasetOut:
    return DatasetOut(
        id=ds.id,
        name=ds.name,
        format=ds.format,
        prefix=ds.prefix,
        status=ds.status,
        error=ds.error,
        owner=ds.owner.name if ds.owner else None,
        created_at=ds.created_at,
        summary=ds.summary,
        stats=ds.stats,
    )


def _invalid(field: str, msg: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ["body", field], "msg": msg, "type": "dataset_invalid"}])


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=DatasetOut)
async def create_dataset(
    state: StateDep,
    user: CurrentUser,
    name: Annotated[str, Form(min_length=1, max_length=200)],
    format: Annotated[Literal["cityscapes", "bdd100k"], Form()],
    prefix: Annotated[
        str | None,
        Form(description="register the dataset already under this prefix of the datasets bucket"),
    ] = None,
    file: Annotated[
        UploadFile | None,
        File(description="or upload it: a .tar.gz / .zip of the native layout"),
    ] = None,
) -> DatasetOut:
    """Register a dataset in its native layout (Cityscapes or BDD100K), as a multipart form.

    Give either `prefix` (the dataset already sits in the datasets bucket there) or `file` (an
    archive, unpacked by the check under `datasets/<id>/`). The answer is 202 with the dataset
    `checking`: a check on the `cpu` queue validates it (layout, image/mask pairs, label values
    of every image) and stores its class statistics; poll `GET /datasets/{id}` until it is
    `ready`, or `invalid` with an error naming the file or the limit. An archive that cannot be
    unpacked safely (bad names, links, too many or too large entries, a zip of zeros, truncated)
    is a 422 naming the file and the entry, and nothing is stored.
    """
    # Copying, checking and storing an archive takes seconds: on the upload threads, so that
    # the short requests keep theirs (`Settings.gateway_upload_concurrency`).
    register = partial(_register, state, user, name, format, prefix, file)
    return await to_thread.run_sync(register, limiter=state.uploads)


def _register(
    state: GatewayState,
    user: User,
    name: str,
    format: str,
    prefix: str | None,
    file: UploadFile | None,
) -> DatasetOut:
    """`create_dataset`'s work, on an upload thread."""
    settings, storage = state.settings, state.datasets_storage
    if (prefix is None) == (file is None):
        raise _invalid("prefix", "give exactly one of prefix (registered data) or file (upload)")
    dataset_id = new_id()
    archive_key = None
    if file is not None:
        key_prefix, archive_key = dataset_prefix(dataset_id), staged_archive_key(dataset_id)
        _stage_archive(storage, file, archive_key, settings)
    else:
        key_prefix = prefix.strip().strip("/")
        if not key_prefix or ".." in key_prefix.split("/") or len(key_prefix) > 500:
            raise _invalid("prefix", f"bad prefix {short(prefix)}")
        if is_upload_prefix(key_prefix):
            raise _invalid("prefix", f"{UPLOADS}/ holds uploads; register your own prefix")
        if not storage.list(key_prefix + "/"):
            raise _invalid("prefix", f"no objects under {key_prefix!r} in the datasets bucket")
    with state.session_factory() as session:
        with removed_on_error(storage, archive_key):
            session.add(
                Dataset(
                    id=dataset_id,
                    name=name,
                    format=format,
                    prefix=key_prefix,
                    status="checking",
                    owner_id=user.id,
                    archive_key=archive_key,
                )
            )
            session.commit()
        enqueue_check(session, state.dispatcher, dataset_id, settings.cpu_queue)
        return dataset_out(_load(session, dataset_id))


def _stage_archive(storage: Storage, file: UploadFile, key: str, settings: Settings) -> None:
    """Copy the upload to a temporary file, read its directory under the archive limits and
    stream its data through the checksums (422 naming the file and the entry), and store it as
    one object at `key`."""
    with tempfile.TemporaryDirectory(dir=_tmp_dir(settings.work_dir)) as tmp:
        archive = Path(tmp) / "upload"
        with open(archive, "wb") as f:
            shutil.copyfileobj(file.file, f, 1 << 20)
        try:
            verify_archive(archive, upload_limits(settings))
        except ArchiveError as e:
            raise _invalid("file", f"{short(file.filename)}: {e}") from None
        with removed_on_error(storage, key):
            storage.put_file(key, archive)


def _tmp_dir(work_dir: Path) -> str | None:
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        return str(work_dir)
    except OSError:
        return None


def _load(session: Session, dataset_id: str) -> Dataset:
    ds = session.scalar(
        select(Dataset).where(Dataset.id == dataset_id).options(selectinload(Dataset.owner))
    )
    if ds is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no dataset {dataset_id!r}")
    return ds


@router.get("", response_model=DatasetPage)
def list_datasets(
    read: ReadDep,
    user: CurrentUser,
    status_: Annotated[
        Literal["checking", "ready", "invalid"] | None, Query(alias="status")
    ] = None,
) -> DatasetPage:
    """Every registered dataset, newest first."""
    query = select(Dataset)
    if status_ is not None:
        query = query.where(Dataset.status == status_)
    with read() as session:
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = session.scalars(
            query.options(selectinload(Dataset.owner)).order_by(
                Dataset.created_at.desc(), Dataset.id.desc()
            )
        ).all()
        return DatasetPage(items=[dataset_out(d) for d in rows], total=total)


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: str, read: ReadDep, user: CurrentUser) -> DatasetOut:
    """One dataset with its check summary and class statistics (`status`: checking, then ready
    or invalid)."""
    with read() as session:
        return dataset_out(_load(session, dataset_id))
