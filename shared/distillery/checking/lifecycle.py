"""A dataset check's life: the only code that writes a dataset's status and its check's holder,
lease, attempts and enqueue time.

```
checking ──claim──► checking (held: holder, lease) ──finish──► ready | invalid
    ▲                  │ (holder dead or lease expired: requeue_lost clears the holder)
    └──────────────────┘
```

Every write is a guarded update: `finish` changes only a `checking` dataset held by the caller,
so a late duplicate of a check, or a check that lost its lease, can never flip a result.
Holders are process identities (`distillery.stages.lifecycle.process_identity`), so a holder
that is a dead process of this host is taken over at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from distillery.db.models import Dataset
from distillery.stages.lifecycle import aware, finite_json, holder_is_dead, now

log = logging.getLogger(__name__)

CHECKING, READY, INVALID = "checking", "ready", "invalid"


@dataclass(frozen=True)
class Claimed:
    """A dataset check this process now holds."""

    dataset_id: str
    format: str
    prefix: str
    #: The staged archive of an upload; None for a registered prefix.
    archive_key: str | None
    attempt: int


def claim(s: Session, dataset_id: str, holder: str, lease: timedelta) -> Claimed | None:
    """Take the check of `dataset_id` for `holder`, or None if it must not run now: the dataset
    is gone or no longer `checking`, or a live process holds its check."""
    ds = s.execute(
        select(Dataset).where(Dataset.id == dataset_id).with_for_update()
    ).scalar_one_or_none()
    if ds is None or ds.status != CHECKING:
        return None
    t = now()
    if ds.check_holder is not None and ds.check_holder != holder:
        until = aware(ds.check_lease_until)
        if until is not None and until > t and not holder_is_dead(ds.check_holder):
            log.info("dataset %s: its check is held by %s", dataset_id, ds.check_holder)
            return None
        log.warning("dataset %s: taking its check over from %s", dataset_id, ds.check_holder)
    ds.check_holder = holder
    ds.check_lease_until = t + lease
    ds.check_attempts += 1
    return Claimed(ds.id, ds.format, ds.prefix, ds.archive_key, ds.check_attempts)


def _held(dataset_id: str, holder: str) -> Any:
    return (
        (Dataset.id == dataset_id) & (Dataset.status == CHECKING) & (Dataset.check_holder == holder)
    )


def heartbeat(s: Session, dataset_id: str, holder: str, lease: timedelta) -> bool:
    """Extend the lease if `holder` still holds the check; False if it does not."""
    r = s.execute(
        update(Dataset)
        .where(_held(dataset_id, holder))
        .values(check_lease_until=now() + lease)
        .execution_options(synchronize_session=False)
    )
    return r.rowcount > 0


def holds(s: Session, dataset_id: str, holder: str) -> bool:
    """True if `holder` still holds the check (it may then delete what the check wrote)."""
    return s.scalar(select(Dataset.id).where(_held(dataset_id, holder))) is not None


def finish(
    s: Session,
    dataset_id: str,
    holder: str,
    status: str,
    *,
    error: str | None = None,
    summary: dict[str, Any] | None = None,
    stats: dict[str, Any] | None = None,
) -> bool:
    """`checking` → `ready` | `invalid`, only by the holder; False if it no longer holds it."""
    if status not in (READY, INVALID):
        raise ValueError(f"a check ends ready or invalid, not {status!r}")
    r = s.execute(
        update(Dataset)
        .where(_held(dataset_id, holder))
        .values(
            status=status,
            error=error,
            summary=finite_json(summary),
            stats=finite_json(stats),
            archive_key=None,
            check_holder=None,
            check_lease_until=None,
        )
        .execution_options(synchronize_session=False)
    )
    return r.rowcount > 0


def mark_enqueued(s: Session, dataset_id: str) -> None:
    """Its message was sent (the reconciler looks for checks without a recent one)."""
    s.execute(
        update(Dataset)
        .where((Dataset.id == dataset_id) & (Dataset.status == CHECKING))
        .values(check_enqueued_at=now())
        .execution_options(synchronize_session=False)
    )


@dataclass(frozen=True)
class Lost:
    """The checks a reconciler pass should send again."""

    #: Held by a process that died or let its lease expire (now not held): send at once.
    taken_over: list[str]
    #: Not held, and never sent or sent over `stale_after_s` ago: send unless the message is
    #: still alive in the broker.
    stale: list[str]


def requeue_lost(s: Session, at: datetime, stale_after_s: float) -> Lost:
    """The reconciler's pass over `checking` datasets: the ids whose message may be lost
    - because their holder is a provably dead process of this host, or its lease expired: the
      holder is cleared (compare-and-set: a holder that renewed meanwhile keeps it);
    - because they are not held, and were never sent or sent over `stale_after_s` ago.
    The caller sends the messages; a duplicate is harmless, because a check is held by one
    process at a time."""
    taken_over: list[str] = []
    stale: list[str] = []
    rows = s.execute(select(Dataset).where(Dataset.status == CHECKING)).scalars().all()
    for ds in rows:
        if ds.check_holder is not None:
            until = aware(ds.check_lease_until)
            dead = holder_is_dead(ds.check_holder)
            if not (dead or until is None or until < at):
                continue
            guard = _held(ds.id, ds.check_holder)
            if not dead:
                guard &= Dataset.check_lease_until.is_(None) | (Dataset.check_lease_until < at)
            r = s.execute(
                update(Dataset)
                .where(guard)
                .values(check_holder=None, check_lease_until=None, check_enqueued_at=None)
                .execution_options(synchronize_session=False)
            )
            if r.rowcount:
                log.warning(
                    "dataset %s: its check lost %s; sending it again", ds.id, ds.check_holder
                )
                taken_over.append(ds.id)
            continue
        sent = aware(ds.check_enqueued_at) or aware(ds.created_at)
        if sent is None or (at - sent).total_seconds() > stale_after_s:
            stale.append(ds.id)
    return Lost(taken_over, stale)
