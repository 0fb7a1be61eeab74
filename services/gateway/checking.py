"""Checking a registered dataset: layout, image/mask pairs and label values, then class statistics.

Runs in the request for now (small datasets); `check_dataset` takes only a session, an id, the
storage and a cache, so a worker can run it unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from distillery.db import Dataset
from distillery.s3 import DatasetCache
from distillery.storage import Storage

#: Splits every registered dataset must have; statistics come from the first.
DEFAULT_SPLITS = ("train", "val")


def check_dataset(
    session: Session,
    dataset_id: str,
    storage: Storage,
    cache: DatasetCache,
    splits: tuple[str, ...] = DEFAULT_SPLITS,
) -> Dataset:
    """Fetch the dataset through the cache, validate every split, compute the training split's
    class statistics; the row ends `ready` (summary, stats) or `invalid` (error naming the file).

    Problems with the data (`DatasetError`) make it invalid; other failures (storage down)
    leave it invalid with the reason and are re-raised.
    """
    from distillery.data.errors import DatasetError
    from distillery.data.validate import validate_dataset

    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise LookupError(f"no dataset {dataset_id!r}")
    dataset.status, dataset.error = "checking", None
    session.commit()
    root = None
    try:
        root = cache.materialize(storage, dataset.prefix)
        summary: dict[str, Any] = {
            split: validate_dataset(root, dataset.format, split) for split in splits
        }
        stats = compute_stats(root, dataset.format, splits[0])
    except (DatasetError, FileNotFoundError) as e:
        dataset.status, dataset.error = "invalid", _relative(str(e), root, dataset.prefix)
        session.commit()
        return dataset
    except Exception as e:
        dataset.status = "invalid"
        reason = _relative(str(e), root, dataset.prefix)
        dataset.error = f"check failed: {type(e).__name__}: {reason}"
        session.commit()
        raise
    dataset.summary, dataset.stats, dataset.status = summary, stats, "ready"
    session.commit()
    return dataset


def compute_stats(root: Path, fmt: str, split: str) -> dict[str, Any]:
    """Class statistics of `split` (`distillery.data.stats.DatasetStats`) as stored in
    `Dataset.stats`: pixel frequencies, image presence, object sizes per class."""
    from distillery.data.stats import compute_stats as _compute

    return _compute(root, fmt, split).model_dump(mode="json")


def _relative(message: str, root: Any, prefix: str) -> str:
    """Name files by their place in the bucket, not by the gateway's cache folder."""
    return message.replace(str(root), prefix.rstrip("/")) if root is not None else message
