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

from collections.abc import Iterable
from typing import Any, Literal

from ..errors import ValidationError
from ..storage import SQLiteStorage, WriteTxn

__all__ = ["Checkpoints", "Direction", "StateUpdate"]

Doc = dict[str, Any]
Direction = Literal["up", "down"]


def _item(doc_id: str) -> str:
    return f"doc:{doc_id}"


class Checkpoints:
    """Reads the stored state of the replication ``replication_id`` of ``collection``.

    Raises :class:`~p2pdb.errors.ValidationError` ``REPLICATION_ID`` for an empty or
    non-string ``replication_id``.
    """

    def __init__(self, storage: SQLiteStorage, collection: str, replication_id: str) -> None:
        if not replication_id or not isinstance(replication_id, str):
            raise ValidationError(
                "replicate() needs a non-empty replication_id string: it keys the stored "
                "checkpoints, so a restart with the same id resumes.",
                code="REPLICATION_ID",
            )
        self.storage = storage
        self.collection = collection
        self.replication_id = replication_id
        #: The key of this replication's rows in the storage's replication table.
        self.key = f"{collection}:{replication_id}"

    def down(self) -> Any:
        """The stored down-checkpoint (``None``: pull from the start)."""
        return self._checkpoint("down", None)

    def up(self) -> int:
        """The stored up-checkpoint: a change sequence of the collection (0: the start)."""
        checkpoint: int = self._checkpoint("up", 0)
        return checkpoint

    def _checkpoint(self, direction: Direction, default: Any) -> Any:
        return self.storage.get_meta(self.key, [direction]).get(direction, default)

    def assumed(self, ids: Iterable[str]) -> dict[str, Doc]:
        """The assumed master states of those of ``ids`` that have one, by id."""
        wanted = {_item(doc_id): doc_id for doc_id in ids}
        stored = self.storage.get_meta(self.key, list(wanted))
        return {wanted[item]: state for item, state in stored.items()}

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

    def write(self, txn: WriteTxn) -> None:
        """Write the changes in ``txn``, the transaction of the documents they cover."""
        values: dict[str, Any] = {_item(i): state for i, state in self._assumed.items()}
        for direction, checkpoint in self._positions.items():
            values[direction] = checkpoint
        txn.set_meta(self._checkpoints.key, values)
