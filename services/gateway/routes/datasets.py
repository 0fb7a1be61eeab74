"""`/datasets`: register a dataset already in the bucket, or upload one as an archive."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, HTTPException, Query, UploadFile, status
from fastapi.exceptions import RequestValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from distillery.archive_safety import ArchiveError, extract_archive
from distillery.db import Dataset
from distillery.db.models import new_id
from distillery.spec import short
from distillery.storage import put_dir
from services.gateway.checking import check_dataset
from services.gateway.deps import (
    CurrentUser,
    DatasetCacheDep,
    DatasetStorageDep,
    ReadDep,
    SessionDep,
    SettingsDep,
)
from services.gateway.schemas import DatasetOut, DatasetPage
from services.gateway.uploads import UPLOADS, removed_on_error, upload_limits

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


def _invalid(field: str, msg: str, **extra: str) -> RequestValidationError:
    return RequestValidationError(
        [{"loc": ["body", field], "msg": msg, "type": "dataset_invalid", **extra}]
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DatasetOut)
def create_dataset(
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
    storage: DatasetStorageDep,
    cache: DatasetCacheDep,
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
    archive, unpacked and uploaded under `datasets/<id>/`). It is checked (layout, image/mask
    pairs, label values of every image) before it is accepted and its class statistics are
    stored; a bad dataset is a 422 naming the file, and stays listed as `invalid`.
    """
    if (prefix is None) == (file is None):
        raise _invalid("prefix", "give exactly one of prefix (registered data) or file (upload)")
    dataset_id = new_id()
    if file is not None:
        key_prefix = f"datasets/{dataset_id}"
        with tempfile.TemporaryDirectory(dir=_tmp_dir(settings.work_dir)) as tmp:
            archive = Path(tmp) / "upload"
            with open(archive, "wb") as f:
                shutil.copyfileobj(file.file, f, 1 << 20)
            try:
                root = extract_archive(archive, Path(tmp) / "data", upload_limits(settings))
            except ArchiveError as e:
                raise _invalid("file", f"{short(file.filename)}: {e}") from None
            with removed_on_error(storage, key_prefix):
                put_dir(storage, key_prefix, root)
        field = "file"
    else:
        key_prefix = prefix.strip().strip("/")
        if not key_prefix or ".." in key_prefix.split("/") or len(key_prefix) > 500:
            raise _invalid("prefix", f"bad prefix {short(prefix)}")
        if key_prefix == UPLOADS or key_prefix.startswith(UPLOADS + "/"):
            raise _invalid("prefix", f"{UPLOADS}/ holds uploads; register your own prefix")
        if not storage.list(key_prefix + "/"):
            raise _invalid("prefix", f"no objects under {key_prefix!r} in the datasets bucket")
        field = "prefix"
    dataset = Dataset(
        id=dataset_id,
        name=name,
        format=format,
        prefix=key_prefix,
        status="checking",
        owner_id=user.id,
    )
    try:
        with removed_on_error(storage, key_prefix if file is not None else None):
            session.add(dataset)
            session.commit()
            dataset = check_dataset(session, dataset_id, storage, cache)
    finally:
        cache.evict(storage, key_prefix)  # the gateway keeps no copy; workers cache their own
    if dataset.status != "ready":
        if file is not None:
            storage.delete_prefix(key_prefix + "/")
        raise _invalid(field, dataset.error or "invalid dataset", dataset_id=dataset_id)
    return dataset_out(_load(session, dataset_id))


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
    """One dataset with its check summary and class statistics."""
    with read() as session:
        return dataset_out(_load(session, dataset_id))
