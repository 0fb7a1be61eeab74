"""Object keys of the datasets bucket, built here and nowhere else.

```
datasets/<id>/...        an uploaded dataset in its native layout (written by its check)
datasets/<id>.archive    the uploaded archive, staged until its check ends
```
Nobody registers a prefix under `datasets/`: it holds uploads.
"""

from __future__ import annotations

#: The datasets bucket's prefix for uploads.
UPLOADS = "datasets"


def dataset_prefix(dataset_id: str) -> str:
    """Where an uploaded dataset's files go (no trailing slash, as `Dataset.prefix`)."""
    return f"{UPLOADS}/{dataset_id}"


def staged_archive_key(dataset_id: str) -> str:
    """The one object an upload stores in the request: its archive, until the check ends."""
    return f"{UPLOADS}/{dataset_id}.archive"


def is_upload_prefix(prefix: str) -> bool:
    """True if `prefix` lies in the uploads' part of the bucket."""
    return prefix == UPLOADS or prefix.startswith(UPLOADS + "/")
