"""Tombstone cleanup: purge removed documents for good once no replication still needs them.

A removal leaves a tombstone (``_deleted: true``) so that replication can tell peers the
document is gone. Tombstones pile up; purging one too early lets a peer that still holds the
document send it back, resurrected. The rule here (see ``docs/cleanup.md``):

- a tombstone must be older than ``min_age`` (RxDB's ``minimumDeletedTime``);
- and every replication of the collection that this file forks (its stored state, running
  or not) must have pushed past it: its up-checkpoint, a sequence number of the collection,
  is at least the tombstone's. That covers tombstones written here *and* tombstones pulled
  from one master that other replications must still forward (multi-hop meshes).

Forks served by this database (as a master) keep no state here: ``min_age`` is their only
protection, as in RxDB. Purging writes no change events and keeps replication state.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol, Self

from .errors import P2PDBError, StorageError, ValidationError
from .storage import Storage
from .streams import EventStream
from .tasks import cancel_and_wait

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MIN_AGE",
    "BackgroundCleanup",
    "CleanupCollection",
    "CleanupDatabase",
    "CleanupPolicy",
    "CleanupReport",
    "purge_tombstones",
]

log = logging.getLogger("p2pdb.cleanup")

#: RxDB's default ``minimumDeletedTime``: 31 days.
DEFAULT_MIN_AGE = timedelta(days=31)

Duration = float | timedelta

#: Tombstones deleted per transaction by default: each delete touches the table and its
#: indexes, so a short transaction keeps other writes flowing (``bench_cleanup.py``).
DEFAULT_BATCH_SIZE = 100
#: Rows looked at per transaction, per tombstone it may delete (looking is cheap).
SCAN_FACTOR = 10


def seconds(value: object, name: str) -> float:
    """``value`` (seconds or a :class:`~datetime.timedelta`) in seconds; a negative,
    infinite or non-number value raises ``CLEANUP_BAD_DURATION``."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValidationError(
            f"{name} must be a number of seconds or a timedelta, got {value!r}.",
            code="CLEANUP_BAD_DURATION",
            field=name,
        )
    if value < 0:
        raise ValidationError(
            f"{name} must not be negative, got {value!r}.", code="CLEANUP_BAD_DURATION", field=name
        )
    return float(value)


@dataclass(frozen=True, slots=True)
class CleanupPolicy:
    """How the background cleanup (``db.start_cleanup(policy)``) runs; RxDB's defaults.

    - ``min_age``: a tombstone must be at least this old (RxDB ``minimumDeletedTime``);
    - ``interval``: time between passes (RxDB ``runEach``);
    - ``first_run_after``: wait before the first pass, so opening stays fast (RxDB
      ``minimumCollectionAge``);
    - ``batch_size``: tombstones deleted per transaction (writes get in between);
    - ``collections``: names to clean (``None``: every added collection);
    - ``ignore_replications``: replication ids whose stored checkpoints must not hold the
      cleanup back (pull-only or retired replications). Ignoring one that still pushes can
      resurrect documents: see ``docs/cleanup.md``.

    Invalid values raise ``CLEANUP_BAD_DURATION`` / ``CLEANUP_BAD_BATCH_SIZE``.
    """

    min_age: Duration = DEFAULT_MIN_AGE
    interval: Duration = timedelta(minutes=5)
    first_run_after: Duration = timedelta(seconds=60)
    batch_size: int = DEFAULT_BATCH_SIZE
    collections: tuple[str, ...] | None = None
    ignore_replications: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        for name in ("min_age", "interval", "first_run_after"):
            seconds(getattr(self, name), name)
        check_batch_size(self.batch_size)


def check_batch_size(batch_size: object) -> int:
    """``batch_size`` if it is a positive int, else ``CLEANUP_BAD_BATCH_SIZE``."""
    if type(batch_size) is not int or batch_size < 1:
        raise ValidationError(
            f"batch_size must be a positive integer, got {batch_size!r}.",
            code="CLEANUP_BAD_BATCH_SIZE",
        )
    return batch_size


class CleanupCollection(Protocol):
    """What a cleanup needs of a collection (:class:`~p2pdb.Collection` provides it)."""

    @property
    def name(self) -> str:
        """The collection's name."""
        ...

    @property
    def storage(self) -> Storage:
        """The storage of its database file."""
        ...

    def check_open(self) -> None:
        """Raise ``DATABASE_CLOSED`` if the database was closed."""
        ...


class CleanupDatabase(Protocol):
    """What the background cleanup needs of a database (:class:`~p2pdb.Database`)."""

    @property
    def collections(self) -> Mapping[str, CleanupCollection]:
        """The added collections, by name."""
        ...

    def close_with(self, closer: Callable[[], Awaitable[None]]) -> Callable[[], None]:
        """Have the database's ``close()`` await ``closer()`` first."""
        ...


def purge_bound(storage: Storage, collection: str, ignore: Collection[str] = ()) -> int:
    """The sequence number up to which every replication of ``collection`` (but those in
    ``ignore``) has pushed: tombstones at or below it were passed by all of them. A
    replication that never stored an up-checkpoint counts as 0 (it may still push all)."""
    bound = storage.last_seq(collection)
    for replication_id, up in storage.up_checkpoints(collection).items():
        if replication_id not in ignore:
            bound = min(bound, up or 0)
    return bound


async def purge_tombstones(
    collection: CleanupCollection,
    min_age: Duration = DEFAULT_MIN_AGE,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    ignore_replications: Collection[str] = (),
) -> int:
    """Purge the tombstones of ``collection`` older than ``min_age`` that every replication
    of it has pushed past (see the module docstring); returns how many were purged.

    Runs as short transactions on the writer thread, each deleting ``batch_size``
    tombstones at most (and looking at ``SCAN_FACTOR`` times as many rows), so other writes
    are not held up. What ``collection.cleanup()`` calls.
    """
    age = seconds(min_age, "min_age")
    check_batch_size(batch_size)
    collection.check_open()
    storage, name = collection.storage, collection.name
    older_than_lwt = (time.time() - age) * 1000  # lwt is in ms, as RxDB
    ignore = frozenset(ignore_replications)
    upto = purge_bound(storage, name, ignore)
    replications = [r for r in storage.up_checkpoints(name) if r not in ignore]
    purged, after = 0, 0
    while after < upto:
        batch = await storage.purge_tombstones(
            name,
            after_seq=after,
            upto_seq=upto,
            older_than_lwt=older_than_lwt,
            scan=batch_size * SCAN_FACTOR,
            limit=batch_size,
            replications=replications,
        )
        purged += batch.purged
        if batch.done:
            break
        after = batch.scanned_to
    return purged


def failure(collection: str, exc: Exception) -> P2PDBError:
    """What a failed pass reports: a :class:`~p2pdb.errors.P2PDBError` as it is, anything
    else as ``StorageError`` ``CLEANUP_FAILED`` with it as ``__cause__``."""
    if isinstance(exc, P2PDBError):
        return exc
    error = StorageError(
        f"Cleaning up {collection!r} failed: {exc!r}. The next pass tries again.",
        code="CLEANUP_FAILED",
        collection=collection,
    )
    error.__cause__ = exc
    return error


@dataclass(frozen=True, slots=True)
class CleanupReport:
    """One pass of the background cleanup: tombstones purged per collection."""

    purged: Mapping[str, int]


class BackgroundCleanup:
    """Runs :func:`purge_tombstones` on the database's collections every ``interval``.

    Start it with ``await db.start_cleanup(policy)`` (or ``await BackgroundCleanup(db,
    policy).start()``); it stops with ``db.close()`` or :meth:`close`, and is usable as
    ``async with``. The constructor starts nothing.
    """

    def __init__(self, database: CleanupDatabase, policy: CleanupPolicy | None = None) -> None:
        self.database = database
        self.policy = policy or CleanupPolicy()
        #: A :class:`CleanupReport` after each pass.
        self.reports: EventStream[CleanupReport] = EventStream()
        #: Errors of a pass (logged too); the next pass runs anyway.
        self.errors: EventStream[P2PDBError] = EventStream()
        self._task: asyncio.Task[None] | None = None
        self._unregister: Callable[[], None] | None = None
        self._closed = False

    async def start(self) -> Self:
        """Start the passes (the first after ``first_run_after``); returns self. Calling it
        again does nothing."""
        if self._task is None and not self._closed:
            self._unregister = self.database.close_with(self.close)
            self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def close(self) -> None:
        """Stop (a pass in progress stops between two batches); can be called twice."""
        self._closed = True
        if self._unregister is not None:
            self._unregister()
            self._unregister = None
        task, self._task = self._task, None
        if task is not None:
            try:
                await cancel_and_wait([task])
            finally:
                self.reports.on_completed()
                self.errors.on_completed()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def run_once(self) -> CleanupReport:
        """One pass over the policy's collections, now; a failing collection is reported
        on :attr:`errors` and the others are cleaned."""
        policy = self.policy
        purged: dict[str, int] = {}
        names = policy.collections or tuple(self.database.collections)
        for name in names:
            collection = self.database.collections.get(name)
            if collection is None:
                continue
            try:
                purged[name] = await purge_tombstones(
                    collection,
                    policy.min_age,
                    batch_size=policy.batch_size,
                    ignore_replications=policy.ignore_replications,
                )
            except Exception as exc:  # reported; the other collections and passes go on
                error = failure(name, exc)
                log.warning("cleanup of %r failed: %s", name, error)
                self.errors.on_next(error)
        report = CleanupReport(purged)
        self.reports.on_next(report)
        return report

    async def _run(self) -> None:
        await asyncio.sleep(seconds(self.policy.first_run_after, "first_run_after"))
        while True:
            await self.run_once()
            await asyncio.sleep(seconds(self.policy.interval, "interval"))
