"""The SQLite write transaction: what a function passed to
:meth:`~p2pdb.storage.SQLiteStorage.write` gets (it implements
:class:`~p2pdb.storage.WriteTxn`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ..changes import LOCAL, ChangeEvent
from ..errors import ConflictError, NotFoundError
from . import catalog, documents
from .base import Direction, Write
from .catalog import Catalog
from .documents import SeqClock, Written
from .own_writes import OwnWrites
from .replication_rows import ReplicationRows

__all__ = ["SQLiteWriteTxn"]


class SQLiteWriteTxn:
    """One write transaction, in the writer thread, between ``BEGIN IMMEDIATE`` and
    ``COMMIT``. ``events`` collects the change events of its writes."""

    __slots__ = ("_catalog", "_clock", "_sqlite", "_own", "_replication", "_written", "events")

    def __init__(
        self,
        conn: sqlite3.Connection,
        catalog: Catalog,
        replication: ReplicationRows,
        own: OwnWrites,
    ) -> None:
        self._sqlite = conn
        self._catalog = catalog
        self._replication = replication
        self._own = own
        self._clock = SeqClock(conn)
        self.events: list[ChangeEvent] = []
        # per collection, what put wrote in this transaction (set_assumed compares with it)
        self._written: dict[str, dict[str, Written]] = {}

    def get(self, collection: str, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Stored states (tombstones included) of the given ids that exist."""
        return documents.get_many(self._sqlite, self._catalog.get(collection), list(ids))

    def put(
        self, collection: str, writes: Sequence[Write], origin: str = LOCAL
    ) -> list[dict[str, Any] | ConflictError]:
        """Write documents; per write, its new state or the :class:`ConflictError` it hit.

        Writes of the same id in one call apply in order. Conflicting writes change nothing.
        """
        info = self._catalog.get(collection)
        conn, replication = self._sqlite, self._replication

        def before_overwrite(revisions: dict[str, str]) -> None:
            # assumed master states stored as markers of these rows become full copies first
            replication.preserve_assumed(conn, info, revisions)

        written = self._written.setdefault(collection, {})
        if origin == LOCAL:
            # not noted (a local write is rarely followed by set_assumed in its transaction,
            # which then reads the rows back); an older note of these rows goes
            if written:
                pk = info.schema.primary_key
                for write in writes:
                    written.pop(write.document[pk], None)
            return documents.put(
                conn, info, writes, origin, self._clock, self.events, before_overwrite
            )
        return documents.put(
            conn, info, writes, origin, self._clock, self.events, before_overwrite, written
        )

    # -- replication state -----------------------------------------------------------------

    def get_checkpoint(self, collection: str, replication_id: str, direction: Direction) -> Any:
        """A replication's stored checkpoint (``None`` if none)."""
        return self._replication.get_checkpoint(self._sqlite, collection, replication_id, direction)

    def get_assumed(
        self, collection: str, replication_id: str, ids: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        """A replication's assumed master states, by document id (decoded)."""
        return self._replication.get_assumed(self._sqlite, collection, replication_id, ids)

    def set_checkpoint(
        self, collection: str, replication_id: str, direction: Direction, value: Any
    ) -> None:
        """Store a replication's checkpoint (any JSON value) in this transaction."""
        self._replication.set_checkpoint(self._sqlite, collection, replication_id, direction, value)

    def set_assumed(
        self, collection: str, replication_id: str, states: Mapping[str, dict[str, Any]]
    ) -> None:
        """Store assumed master states by document id (encoded by the collection's codec)."""
        self._replication.set_assumed(
            self._sqlite, collection, replication_id, states, self._written.get(collection)
        )

    def forget_replication(self, collection: str, replication_id: str) -> None:
        """Drop every checkpoint and assumed state of one replication."""
        self._replication.forget(self._sqlite, collection, replication_id)

    # -- info records, the catalog, re-encoding --------------------------------------------

    def get_info(self, key: str) -> str | None:
        """A value of the file's info records, as this transaction sees it."""
        return catalog.get_info(self._sqlite, key)

    def set_info(self, key: str, value: str) -> None:
        """Store an info record in this transaction."""
        catalog.set_info(self._sqlite, key, value)

    def stored_schemas(self) -> dict[str, dict[str, Any]]:
        """The schema of every collection stored in the file, as this transaction sees it."""
        return catalog.stored_schemas(self._sqlite)

    def recode_collection(
        self, collection: str, transform: Callable[[str, dict[str, Any]], dict[str, Any]]
    ) -> None:
        """Rewrite every stored body of the stored ``collection`` (live documents and
        tombstones) and every assumed master state of its replications as
        ``transform(doc_id, body)``, in batches; ``body`` is the stored (encoded) form.
        Revisions and sequence numbers stay; no change events are emitted."""
        if not catalog.is_stored(self._sqlite, collection):
            raise NotFoundError(
                f"No collection {collection!r} is stored in this database.",
                code="COLLECTION_NOT_FOUND",
                name=collection,
            )
        self._written.pop(collection, None)  # the stored bytes change
        documents.recode_bodies(self._sqlite, collection, transform)
        self._replication.recode_assumed(self._sqlite, collection, transform)

    def drop_damaged(self, collection: str, doc_id: str) -> None:
        """Remove a damaged document's row (no tombstone: a tombstone would travel to
        peers and delete their good copies) and reset the down-checkpoint of every
        replication of the collection, so the next pull starts over and brings back a
        peer's copy. See :meth:`~p2pdb.storage.WriteTxn.drop_damaged`."""
        self._written.get(collection, {}).pop(doc_id, None)
        documents.drop_damaged(self._sqlite, self._catalog.get(collection), doc_id)
        for name, replication_id in self._replication.list_replications(self._sqlite):
            if name == collection and self.get_checkpoint(name, replication_id, "down") is not None:
                self.set_checkpoint(name, replication_id, "down", None)

    def finish(self) -> None:
        """Called by the storage before ``COMMIT`` (not by write functions): store the
        sequence clock and note the sequence range written as this storage's own."""
        written = self._clock.save(self._sqlite)
        if written is not None:
            self._own.note(*written)
