"""The stored state of one replication: its checkpoints and its assumed master states.

This is the only module of the replication package that reads or writes them. Per
replication (a collection and a replication id) it keeps:

- the down-checkpoint: the master's opaque checkpoint after the last pulled batch;
- the up-checkpoint: the collection's own change sequence up to which changes were pushed;
- per document, the assumed master state: the last state the fork knows the master holds.

They are written with :class:`StateUpdate` inside the write transaction of the documents
they cover, so a crash never skips or repeats a change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ..eager import start_eagerly
from ..errors import ValidationError
from ..storage import Direction, Storage, WriteTxn, replication_origin

__all__ = ["Checkpoints", "Direction", "StateUpdate", "write_to_the_end"]

Doc = dict[str, Any]
T = TypeVar("T")


class Checkpoints:
    """Reads the stored state of the replication ``replication_id`` of ``collection``.

    Raises :class:`~p2pdb.errors.ValidationError` ``REPLICATION_ID`` for an empty or
    non-string ``replication_id``.
    """

    def __init__(self, storage: Storage, collection: str, replication_id: str) -> None:
        if not replication_id or not isinstance(replication_id, str):
            raise ValidationError(
                "replicate() needs a non-empty replication_id string: it keys the stored "
                "checkpoints, so a restart with the same id resumes.",
                code="REPLICATION_ID",
            )
        self.storage = storage
        self.collection = collection
        self.replication_id = replication_id
        #: Names this replication in logs and is the ``origin`` of the writes it makes.
        self.key = replication_origin(collection, replication_id)

    def down(self) -> Any:
        """The stored down-checkpoint (``None``: pull from the start)."""
        return self._checkpoint("down", None)

    def up(self) -> int:
        """The stored up-checkpoint: a change sequence of the collection (0: the start)."""
        checkpoint: int = self._checkpoint("up", 0)
        return checkpoint

    def _checkpoint(self, direction: Direction, default: Any) -> Any:
        value = self.storage.get_checkpoint(self.collection, self.replication_id, direction)
        return default if value is None else value

    def assumed(self, ids: Iterable[str]) -> dict[str, Doc]:
        """The assumed master states of those of ``ids`` that have one, by id."""
        return self.storage.get_assumed(self.collection, self.replication_id, list(ids))

    def update(self) -> StateUpdate:
        """A new, empty set of changes to write in a transaction."""
        return StateUpdate(self)


class StateUpdate:
    """Changes to a replication's stored state, written by :meth:`write` in a transaction."""

    def __init__(self, checkpoints: Checkpoints) -> None:
        self._checkpoints = checkpoints
        self._positions: dict[Direction, Any] = {}
        self._assumed: dict[str, Doc] = {}

    def set_checkpoint(self, direction: Direction, value: Any) -> None:
        """Store ``value`` as the checkpoint of ``direction``."""
        self._positions[direction] = value

    def set_assumed(self, doc_id: str, state: Doc) -> None:
        """Store ``state`` (wire form) as the assumed master state of ``doc_id``."""
        self._assumed[doc_id] = state

    def keep_assumed(self, doc_id: str) -> None:
        """Drop the new assumed state of ``doc_id``: the stored one stays."""
        del self._assumed[doc_id]

    @property
    def rows(self) -> int:
        """How many rows :meth:`write` writes."""
        return len(self._assumed) + len(self._positions)

    def write(self, txn: WriteTxn) -> None:
        """Write the changes in ``txn``, the transaction of the documents they cover."""
        collection, replication_id = self._checkpoints.collection, self._checkpoints.replication_id
        if self._assumed:
            txn.set_assumed(collection, replication_id, self._assumed)
        for direction, checkpoint in self._positions.items():
            txn.set_checkpoint(collection, replication_id, direction, checkpoint)


async def write_to_the_end(
    storage: Storage,
    fn: Callable[[WriteTxn], T],
    on_done: Callable[[T], None] | None = None,
    *,
    small: bool = False,
) -> T:
    """``storage.write(fn, small=small)``, awaited to its end even if the caller is
    cancelled meanwhile (the cancellation is raised after it); ``on_done`` gets the result
    of a write that committed, cancelled caller or not.

    A write sent to the writer thread commits whether or not its caller still waits. A
    direction cancelled by ``pause()`` or ``cancel()`` while its write was queued would
    end its turn (:mod:`p2pdb.replication.turns`) before that
    write committed: the direction restarted next (or the other one) would read the states
    from before it and decide on them, and the late commit would then overwrite what they
    read (a pulled master state skipped for good, or a stale state pushed over the master's).
    """
    task = start_eagerly(storage.write(fn, small=small))  # a write on the loop: done now
    try:
        result = await asyncio.shield(task)
    except asyncio.CancelledError:
        await _finished(task)
        if on_done is not None and not task.cancelled() and task.exception() is None:
            on_done(task.result())
        raise  # the caller's cancellation, now that the write has ended
    if on_done is not None:
        on_done(result)
    return result


async def _finished(task: asyncio.Future[Any]) -> None:
    """Wait for ``task`` to end, through any further cancellations; its outcome is dropped."""
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            continue
        except Exception:  # noqa: S112 - the write's own error: the caller is cancelled anyway
            break
    if not task.cancelled():
        task.exception()  # retrieved: never logged as "never retrieved"
