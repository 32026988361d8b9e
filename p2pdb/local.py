"""Local documents: small JSON values keyed by id, kept beside the documents of a database or
of one collection, never replicated (RxDB's ``insertLocal`` / ``getLocal`` / ``upsertLocal``
and a local document's ``remove``).

They suit per-device state: the last screen shown, a sync cursor of your own, settings. They
are stored in the file (``storage/local_rows.py``) as plain JSON, never encrypted, and do not
appear in queries, change sequences, replication or ``export_json()``.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
import reactivex
from reactivex import Observable
from reactivex import operators as ops

from .errors import ConflictError, NotFoundError, ValidationError
from .storage import SQLiteStorage
from .streams import EventStream
from .values import json_copy

__all__ = ["LocalDocument", "LocalDocumentMethods", "LocalDocuments", "LocalModifier"]

#: What ``modify_local`` takes: the current value in, the next one out (may be async).
LocalModifier = Callable[[dict[str, Any]], Mapping[str, Any] | Awaitable[Mapping[str, Any]]]


class LocalDocument:
    """One state of one local document, as it was when read or written. Never changes.

    ``data`` is a deep copy of its value (a dict); ``deleted`` is True only for the state
    :meth:`LocalDocuments.remove_local` hands out and :attr:`LocalDocuments.changes` emits.
    """

    __slots__ = ("_row", "_store", "deleted")

    def __init__(self, store: LocalDocuments, row: dict[str, Any], deleted: bool = False) -> None:
        self._store = store
        self._row = row
        self.deleted = deleted

    @property
    def id(self) -> str:
        """The local document's id."""
        value: str = self._row["id"]
        return value

    @property
    def revision(self) -> str:
        """``"<height>-<token>"``: the height grows by one per write (it restarts after a
        removal, since a removed local document leaves nothing behind)."""
        value: str = self._row["_rev"]
        return value

    @property
    def collection(self) -> str | None:
        """The collection it belongs to, or ``None`` for the database's own."""
        return self._store.collection

    @property
    def data(self) -> dict[str, Any]:
        """A deep copy of the stored value."""
        copy: dict[str, Any] = orjson.loads(orjson.dumps(self._row["data"]))
        return copy

    def get(self, key: str, default: Any = None) -> Any:
        """One top-level field of :attr:`data` (RxDB's ``localDoc.get(path)``, one level)."""
        return self.data.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the stored value (the same as :attr:`data`)."""
        return self.data

    async def modify(self, fn: LocalModifier) -> LocalDocument:
        """Write ``fn(value)`` over the latest state, again on newer states until it applies
        (RxDB's ``incrementalModify``); ``fn`` may be async."""
        return await self._store.modify_local(self.id, fn)

    async def patch(self, fields: Mapping[str, Any]) -> LocalDocument:
        """Set the given top-level fields on the latest state (RxDB's ``incrementalPatch``)."""
        changes = dict(fields)
        return await self._store.modify_local(self.id, lambda value: {**value, **changes})

    async def remove(self) -> LocalDocument:
        """Delete this local document; its last state with ``deleted`` True."""
        return await self._store.remove_local(self.id)

    def observe(self) -> Observable[LocalDocument | None]:
        """This local document now, then each new state (``None`` once removed)."""
        return self._store.observe_local(self.id)

    def __repr__(self) -> str:
        where = self.collection or "database"
        return f"<LocalDocument {where}/{self.id} rev={self.revision}>"


class LocalDocuments:
    """The local documents of the database (``collection`` is ``None``) or of one collection.

    Get one from ``db.local_documents()`` / ``db.local_documents(name)``; ``db.insert_local``
    and friends use the database's. Each write is one transaction on the writer thread; its
    new state is emitted on :attr:`changes` when the write returns. Writes by other processes
    are stored and read, but not emitted here.
    """

    def __init__(
        self, storage: SQLiteStorage, collection: str | None, check_open: Callable[[], None]
    ) -> None:
        self.storage = storage
        self.collection = collection
        self._parent = "" if collection is None else collection
        self._check_open = check_open
        self._removed = False
        self._changes: EventStream[LocalDocument] = EventStream()

    @property
    def changes(self) -> Observable[LocalDocument]:
        """Each new state written through this object, in write order; a removal emits the
        last state with ``deleted`` True."""
        return self._changes

    def check_usable(self) -> None:
        """Raise ``DATABASE_CLOSED``, or ``COLLECTION_REMOVED`` once the collection is gone."""
        self._check_open()
        if self._removed:
            raise NotFoundError(
                f"The collection {self.collection!r} was removed, with its local documents.",
                code="COLLECTION_REMOVED",
                name=self.collection,
            )

    def _check(self, doc_id: object, data: object = None, *, with_data: bool = False) -> None:
        self.check_usable()
        if not isinstance(doc_id, str) or not doc_id:
            raise ValidationError(
                f"A local document's id must be a non-empty string, got {doc_id!r}.",
                code="LOCAL_DOCUMENT_ID",
            )
        if with_data and not isinstance(data, Mapping):
            raise ValidationError(
                f"A local document's data must be a dict, got {type(data).__name__}.",
                code="LOCAL_DOCUMENT_NOT_OBJECT",
                id=doc_id,
            )

    async def _put(self, doc_id: str, data: Mapping[str, Any], insert: bool) -> LocalDocument:
        self._check(doc_id, data, with_data=True)
        _, row = await self.storage.put_local(self._parent, doc_id, json_copy(data), insert=insert)
        doc = LocalDocument(self, row)
        self._changes.on_next(doc)
        return doc

    async def insert_local(self, doc_id: str, data: Mapping[str, Any]) -> LocalDocument:
        """Store a new local document; raises :class:`~p2pdb.errors.ConflictError`
        (``LOCAL_DOCUMENT_EXISTS``, with ``error.document``) if ``doc_id`` exists."""
        return await self._put(doc_id, data, insert=True)

    async def upsert_local(self, doc_id: str, data: Mapping[str, Any]) -> LocalDocument:
        """Store ``data`` under ``doc_id``, replacing what was there (not merging)."""
        return await self._put(doc_id, data, insert=False)

    async def modify_local(self, doc_id: str, fn: LocalModifier) -> LocalDocument:
        """Write ``fn(value)`` over the stored value of ``doc_id``; if another write got in
        first, run ``fn`` again on the newer value until it applies. Raises
        ``LOCAL_DOCUMENT_NOT_FOUND`` if there is none."""
        self._check(doc_id)
        while True:
            row = self.storage.get_local(self._parent, doc_id)
            if row is None:
                raise self._not_found(doc_id)
            new = fn(LocalDocument(self, row).data)
            if inspect.isawaitable(new):
                new = await new
            self._check(doc_id, new, with_data=True)
            try:
                _, written = await self.storage.put_local(
                    self._parent, doc_id, json_copy(new), insert=False, expected=row["_rev"]
                )
            except ConflictError as exc:
                if exc.code == "LOCAL_DOCUMENT_CONFLICT":
                    continue  # another write got in first: run fn on what it wrote
                raise
            doc = LocalDocument(self, written)
            self._changes.on_next(doc)
            return doc

    def _not_found(self, doc_id: str) -> NotFoundError:
        return NotFoundError(
            f"No local document {doc_id!r} here.", code="LOCAL_DOCUMENT_NOT_FOUND", id=doc_id
        )

    async def get_local(self, doc_id: str) -> LocalDocument | None:
        """The local document ``doc_id``, or ``None``."""
        self._check(doc_id)
        row = self.storage.get_local(self._parent, doc_id)
        return None if row is None else LocalDocument(self, row)

    async def remove_local(self, doc_id: str) -> LocalDocument:
        """Delete the local document ``doc_id``; its last state with ``deleted`` True.
        Raises :class:`~p2pdb.errors.NotFoundError` (``LOCAL_DOCUMENT_NOT_FOUND``) if none."""
        self._check(doc_id)
        row = await self.storage.delete_local(self._parent, doc_id)
        if row is None:
            raise self._not_found(doc_id)
        doc = LocalDocument(self, row, deleted=True)
        self._changes.on_next(doc)
        return doc

    async def list_local(self) -> list[LocalDocument]:
        """Every local document here, by id."""
        self.check_usable()
        return [LocalDocument(self, row) for row in self.storage.list_local(self._parent)]

    def observe_local(self, doc_id: str) -> Observable[LocalDocument | None]:
        """The local document ``doc_id`` now (``None`` if absent), then each new state
        (``None`` after a removal); RxDB's ``getLocal$``."""
        self._check(doc_id)

        def current() -> Observable[LocalDocument | None]:
            row = self.storage.get_local(self._parent, doc_id)
            now: LocalDocument | None = None if row is None else LocalDocument(self, row)

            def same_id(doc: LocalDocument) -> bool:
                return doc.id == doc_id

            def live(doc: LocalDocument) -> LocalDocument | None:
                return None if doc.deleted else doc

            later: Observable[LocalDocument | None] = self._changes.pipe(
                ops.filter(same_id), ops.map(live)
            )

            def revision(doc: LocalDocument | None) -> str | None:
                return None if doc is None else doc.revision

            return reactivex.concat(reactivex.just(now), later).pipe(
                ops.distinct_until_changed(revision)
            )

        return reactivex.defer(lambda _scheduler: current())

    def complete(self, *, removed: bool = False) -> None:
        """End :attr:`changes` (the database closed, or with ``removed`` the collection was
        removed: further use raises ``COLLECTION_REMOVED``)."""
        self._removed = self._removed or removed
        self._changes.on_completed()


class LocalDocumentMethods:
    """``insert_local``, ``upsert_local``, ``get_local``, ``remove_local`` and
    ``observe_local``, shared by :class:`~p2pdb.Database` (its own local documents) and
    :class:`~p2pdb.Collection` (the collection's): each asks :meth:`local_store` for the
    right :class:`LocalDocuments`."""

    def local_store(self) -> LocalDocuments:
        """The local documents these methods act on."""
        raise NotImplementedError

    async def insert_local(self, doc_id: str, data: Mapping[str, Any]) -> LocalDocument:
        """Store a new local document (``LOCAL_DOCUMENT_EXISTS`` if the id is taken)."""
        return await self.local_store().insert_local(doc_id, data)

    async def upsert_local(self, doc_id: str, data: Mapping[str, Any]) -> LocalDocument:
        """Store a local document, replacing any with the same id."""
        return await self.local_store().upsert_local(doc_id, data)

    async def get_local(self, doc_id: str) -> LocalDocument | None:
        """A local document, or ``None``."""
        return await self.local_store().get_local(doc_id)

    async def remove_local(self, doc_id: str) -> LocalDocument:
        """Delete a local document (``LOCAL_DOCUMENT_NOT_FOUND`` if there is none)."""
        return await self.local_store().remove_local(doc_id)

    def observe_local(self, doc_id: str) -> Observable[LocalDocument | None]:
        """A local document now, then each new state (``None``: absent)."""
        return self.local_store().observe_local(doc_id)
