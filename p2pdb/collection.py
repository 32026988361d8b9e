"""Collection: the documents of one schema, and every way to write and query them."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from reactivex import Observable

from .changes import LOCAL, ChangeEvent
from .cleanup import DEFAULT_MIN_AGE, purge_tombstones
from .conflicts import ConflictHandler, as_conflict_handler
from .document import Document, Modifier
from .errors import ConflictError, NotFoundError, P2PDBError, ValidationError
from .identity import DeviceIdentity
from .local import LocalDocumentMethods, LocalDocuments
from .queries import CountQuery, FindOneQuery, FindQuery
from .schema import Schema
from .storage import ANY_REVISION, SMALL_WRITE_ROWS, SQLiteStorage, Write, WriteTxn
from .storage.base import DamagedDocument
from .streams import CommitStreams, iterate
from .values import brief, is_text, json_copy

__all__ = ["BulkWriteResult", "Collection", "CollectionDatabase", "check_id"]


def check_id(doc_id: object) -> None:
    """Raise ``ARGUMENT_INVALID`` unless ``doc_id`` could be a stored primary key: a string
    UTF-8 can encode (SQLite cannot even bind one with a lone surrogate)."""
    if not is_text(doc_id):
        raise ValidationError(
            f"A document id is a string (without lone surrogates), got {brief(doc_id)}.",
            code="ARGUMENT_INVALID",
        )


class CollectionDatabase(Protocol):
    """What a collection needs from its database (:class:`~p2pdb.Database` provides it).

    Declared here so that ``collection`` never imports ``database``: the database creates
    collections and feeds their streams; collections only call these members.
    """

    @property
    def storage(self) -> SQLiteStorage:
        """The storage of the database file."""
        ...

    @property
    def safe_seq(self) -> int:
        """The sequence number up to which every write was emitted (see ``tailer.py``)."""
        ...

    @property
    def token(self) -> str:
        """The database file's random token (peers tell databases apart with it)."""
        ...

    def check_open(self) -> None:
        """Raise :class:`~p2pdb.errors.ClosedError` if the database was closed."""
        ...

    def close_with(self, closer: Callable[[], Awaitable[None]]) -> Callable[[], None]:
        """Have the database's ``close()`` await ``closer()`` first; returns the function
        that unregisters it."""
        ...

    def close_with_collection(
        self, name: str, closer: Callable[[], Awaitable[None]]
    ) -> Callable[[], None]:
        """:meth:`close_with`, and also awaited first by ``remove_collection(name)``."""
        ...

    def local_documents(self, collection: str | None = None) -> LocalDocuments:
        """The local documents of the database (``None``) or of one collection."""
        ...

    @property
    def identity(self) -> DeviceIdentity:
        """The database's device key pair (what the WebRTC handshake proves)."""
        ...


@dataclass
class BulkWriteResult:
    """What a bulk write did: the documents written, and one error per document that was not.

    Each error carries ``parameters["document_id"]`` (``None`` when the document had no
    usable primary key) and ``parameters["index"]``, its position in the input.
    """

    success: list[Document] = field(default_factory=list)
    errors: list[P2PDBError] = field(default_factory=list)


class Collection(LocalDocumentMethods):
    """A named set of documents that share a schema. Get one from ``db.add_collection``."""

    def __init__(
        self,
        database: CollectionDatabase,
        name: str,
        schema: Schema,
        conflict_handler: object = None,
        streams: CommitStreams | None = None,
    ) -> None:
        self.database = database
        self.name = name
        self.schema = schema
        self.conflict_handler: ConflictHandler = as_conflict_handler(conflict_handler)
        # The database owns and feeds the streams (it sees every commit); the collection
        # only exposes them.
        self._streams = streams if streams is not None else CommitStreams()

    @property
    def storage(self) -> SQLiteStorage:
        """The storage of the database this collection belongs to."""
        return self.database.storage

    @property
    def batches(self) -> Observable[list[ChangeEvent]]:
        """Every committed transaction's events for this collection, as one list, in commit
        order (live queries and replication listen here: one wake-up per commit)."""
        return self._streams.batches

    @property
    def changes(self) -> Observable[ChangeEvent]:
        """Every committed write to this collection, one :class:`ChangeEvent` per document,
        in commit order. Hot: subscribers get the events after they subscribe."""
        return self._streams.changes

    def watch(self, *, max_buffer: int = 10_000) -> AsyncIterator[ChangeEvent]:
        """``async for event in collection.watch()``: the events of :attr:`changes`.

        A consumer more than ``max_buffer`` events behind gets
        :class:`~p2pdb.streams.StreamOverflowError`; closing the database ends the loop.
        """
        if type(max_buffer) is not int or max_buffer < 1:
            raise ValidationError(
                f"max_buffer must be an integer >= 1, got {brief(max_buffer)}.",
                code="ARGUMENT_INVALID",
            )
        return iterate(self._streams.changes, max_buffer=max_buffer)

    def __repr__(self) -> str:
        return f"<Collection {self.name}>"

    def check_open(self) -> None:
        """Raise :class:`~p2pdb.errors.ClosedError` if the database was closed."""
        self.database.check_open()

    def local_store(self) -> LocalDocuments:
        """This collection's local documents (never replicated): what ``insert_local``,
        ``upsert_local``, ``get_local``, ``remove_local`` and ``observe_local`` act on."""
        return self.database.local_documents(self.name)

    # -- validation ------------------------------------------------------------------------

    def prepare(self, data: object) -> dict[str, Any]:
        """A validated deep copy of ``data`` as it will be stored (raises ValidationError)."""
        if type(data) is not dict and not isinstance(data, Mapping):  # exact dict: no ABC check
            raise ValidationError(
                f"A document must be a dict, got {type(data).__name__}.",
                code="DOCUMENT_NOT_OBJECT",
            )
        # a deep copy, stored exactly as given or refused (U+0000 is fine in encrypted fields)
        doc = json_copy(data, opaque=self.schema.encrypted)
        for key in doc:
            if key[:1] == "_":
                raise ValidationError(
                    f"Field {key!r} starts with an underscore; such names are reserved for "
                    "p2pdb (_rev, _deleted, _meta). Rename it.",
                    code="DOCUMENT_RESERVED_FIELD",
                    field=key,
                )
        self.schema.fill_primary_key(doc)  # a composite key is filled in here
        self.schema.validate(doc)
        return doc

    # -- writing ---------------------------------------------------------------------------

    async def bulk_write(
        self, writes: Sequence[Write], origin: str = LOCAL
    ) -> list[dict[str, Any] | ConflictError]:
        """Write already-validated states in one transaction, each against its expected
        revision; per write, the new stored state or the :class:`ConflictError` it hit.

        The low-level write under every other (replication uses it): call :meth:`prepare`
        on each document first. ``origin`` becomes the events' ``origin``.
        """
        self.check_open()

        def run(txn: WriteTxn) -> list[dict[str, Any] | ConflictError]:
            return txn.put(self.name, writes, origin)

        return await self.storage.write(run, small=len(writes) <= SMALL_WRITE_ROWS)

    async def _write_one(self, write: Write) -> Document:
        (result,) = await self.bulk_write([write])
        if isinstance(result, ConflictError):
            raise result
        return Document(self, result)

    async def insert(self, data: Mapping[str, Any]) -> Document:
        """Insert a new document; raises ConflictError (code ``DOCUMENT_EXISTS``) if its id
        is taken and ValidationError if it breaks the schema."""
        return await self._write_one(Write(self.prepare(data), expected=None))

    async def upsert(self, data: Mapping[str, Any]) -> Document:
        """Insert the document, or overwrite the stored one with the same id."""
        return await self._write_one(Write(self.prepare(data)))

    async def bulk_insert(self, docs: Sequence[Mapping[str, Any]]) -> BulkWriteResult:
        """Insert many documents in one transaction: the valid ones are written, each
        invalid or duplicate one is reported in ``result.errors``."""
        return await self._bulk(docs, expected=None)

    async def bulk_upsert(self, docs: Sequence[Mapping[str, Any]]) -> BulkWriteResult:
        """Upsert many documents in one transaction (invalid ones reported, not written)."""
        return await self._bulk(docs, expected=ANY_REVISION)

    async def _bulk(self, docs: Sequence[Mapping[str, Any]], expected: Any) -> BulkWriteResult:
        if isinstance(docs, str | bytes | bytearray | Mapping) or not isinstance(docs, Iterable):
            raise ValidationError(
                f"A bulk write takes a list of documents, got {type(docs).__name__}.",
                code="ARGUMENT_INVALID",
            )
        docs = list(docs)
        result = BulkWriteResult()
        writes: list[Write] = []
        positions: list[int] = []
        prepare, add_write, add_position = self.prepare, writes.append, positions.append
        for index, data in enumerate(docs):
            try:
                add_write(Write(prepare(data), expected=expected))
                add_position(index)
            except ValidationError as exc:
                doc_id = data.get(self.schema.primary_key) if isinstance(data, Mapping) else None
                exc.parameters.setdefault("document_id", doc_id)
                exc.parameters["index"] = index
                result.errors.append(exc)
        if writes:
            for index, outcome in zip(positions, await self.bulk_write(writes), strict=True):
                if isinstance(outcome, ConflictError):
                    outcome.parameters["document_id"] = outcome.parameters.get("id")
                    outcome.parameters["index"] = index
                    result.errors.append(outcome)
                else:
                    result.success.append(Document(self, outcome))
        result.errors.sort(key=lambda e: e.parameters["index"])
        return result

    async def remove(self, selector: Mapping[str, Any] | None = None) -> list[Document]:
        """Delete every document matching ``selector``; returns their tombstones."""
        found = await self.find(selector)
        if not found:
            return []
        writes = [Write(doc.to_dict(), deleted=True, expected=doc.revision) for doc in found]
        outcomes = await self.bulk_write(writes)
        removed = [Document(self, o) for o in outcomes if not isinstance(o, ConflictError)]
        # A document changed between the read and the write: remove what it is now.
        for outcome in outcomes:
            if isinstance(outcome, ConflictError) and outcome.document is not None:
                if not outcome.document["_deleted"]:
                    removed.append(await self.remove_document(outcome.parameters["id"]))
        return removed

    async def remove_document(self, doc_id: str) -> Document:
        """Write a tombstone over the latest state of ``doc_id``; returns the tombstone's
        Document (what ``Document.remove()`` does). Raises
        :class:`~p2pdb.errors.NotFoundError` if it does not exist or was removed."""
        check_id(doc_id)

        async def tombstone(data: dict[str, Any]) -> dict[str, Any]:
            return data

        return await self._modify_id(doc_id, tombstone, deleted=True)

    async def modify_document(self, doc: Document, fn: Modifier) -> Document:
        """Write ``fn(data)`` over ``doc``; if another write got in first, run ``fn`` again
        on the newer state until it applies (what ``Document.modify()`` does)."""
        return await self._modify_id(doc.id, fn, first=doc)

    async def _modify_id(
        self,
        doc_id: str,
        fn: Modifier,
        *,
        deleted: bool = False,
        first: Document | None = None,
    ) -> Document:
        current = first
        while True:
            if current is None:
                current = await self.find_one(doc_id)
                if current is None:
                    raise NotFoundError(
                        f"Document {doc_id!r} does not exist in {self.name!r} (or was removed).",
                        code="DOCUMENT_NOT_FOUND",
                        id=doc_id,
                    )
            if current.deleted:
                raise NotFoundError(
                    f"Document {doc_id!r} in {self.name!r} was removed; insert it again instead.",
                    code="DOCUMENT_NOT_FOUND",
                    id=doc_id,
                )
            new = fn(current.to_dict())
            if inspect.isawaitable(new):
                new = await new
            self.schema.check_key_kept(new, doc_id)
            data = self.prepare(new)
            if data[self.schema.primary_key] != doc_id:
                raise ValidationError(
                    f"The primary key cannot change (was {doc_id!r}, got "
                    f"{data[self.schema.primary_key]!r}).",
                    code="DOCUMENT_PRIMARY_KEY_CHANGED",
                    id=doc_id,
                )
            try:
                return await self._write_one(Write(data, deleted, expected=current.revision))
            except ConflictError as exc:
                if exc.document is None:
                    raise
                current = Document(self, exc.document)

    async def replace_document(self, doc: Document, data: Mapping[str, Any]) -> Document:
        """Write ``data`` as the next state of exactly ``doc``'s revision (what
        ``Document.replace()`` does): raises :class:`~p2pdb.errors.ConflictError` if the
        document changed since ``doc`` was read."""
        self.schema.check_key_kept(data, doc.id)
        prepared = self.prepare(data)
        if prepared[self.schema.primary_key] != doc.id:
            raise ValidationError(
                "replace() cannot change the primary key.", code="DOCUMENT_PRIMARY_KEY_CHANGED"
            )
        return await self._write_one(Write(prepared, expected=doc.revision))

    # -- reading ---------------------------------------------------------------------------

    def find(
        self,
        selector: Mapping[str, Any] | None = None,
        sort: Sequence[Mapping[str, str]] | None = None,
        skip: int = 0,
        limit: int | None = None,
    ) -> FindQuery:
        """Documents matching a Mango ``selector`` (a dict; ``None`` matches all), ordered by
        ``sort`` (a list of ``{"field": "asc" | "desc"}``), then by primary key. Await the
        result. A malformed selector or sort raises :class:`~p2pdb.errors.QueryError` here,
        at the call, before anything is awaited."""
        return FindQuery(self, selector, sort, skip, limit)

    def find_one(
        self,
        selector: Mapping[str, Any] | str | None = None,
        sort: Sequence[Mapping[str, str]] | None = None,
    ) -> FindOneQuery:
        """The document with this primary key (a string), or the first matching a selector
        (a dict); ``None`` when there is none. Await the result. A malformed selector or
        sort raises :class:`~p2pdb.errors.QueryError` at the call."""
        return FindOneQuery(self, selector, sort)

    def count(self, selector: Mapping[str, Any] | None = None) -> CountQuery:
        """How many documents match ``selector`` (a dict; ``None`` counts all). Await the
        result. A malformed selector raises :class:`~p2pdb.errors.QueryError` at the call
        (``count([])`` is ``QUERY_INVALID_SELECTOR``, not a count of everything)."""
        return CountQuery(self, selector)

    async def find_by_ids(self, ids: Sequence[str]) -> dict[str, Document]:
        """Documents by primary key; ids that do not exist (or were removed) are left out.
        ``ids`` must be a list (or other iterable, not a string) of strings, else
        ``ARGUMENT_INVALID``."""
        if isinstance(ids, str | bytes | bytearray | Mapping) or not isinstance(ids, Iterable):
            raise ValidationError(
                f"find_by_ids() takes a list of ids, got {type(ids).__name__}.",
                code="ARGUMENT_INVALID",
            )
        ids = list(ids)
        for doc_id in ids:
            check_id(doc_id)
        self.check_open()
        states = self.storage.get(self.name, ids)
        return {
            i: Document(self, states[i]) for i in ids if i in states and not states[i]["_deleted"]
        }

    def stored_state(self, doc_id: str) -> dict[str, Any] | None:
        """The stored state of one document with its ``_rev``, ``_deleted`` and ``_meta``
        (a tombstone too), or ``None`` if it was never written."""
        check_id(doc_id)
        self.check_open()
        return self.storage.get_one(self.name, doc_id)

    # -- damaged documents (see docs/encryption.md) ----------------------------------------

    async def damaged(self) -> list[DamagedDocument]:
        """Every stored document whose encrypted body fails authentication
        (``ENCRYPTION_TAMPERED``), by id, each with the error that says which field. Such a
        document is left out of queries and replication; reading it by id raises. Reads the
        whole collection."""
        self.check_open()
        return await self.storage.damaged(self.name)

    async def repair(
        self, doc_id: str, *, replacement: Mapping[str, Any] | None = None
    ) -> Document | None:
        """Repair a damaged document.

        With ``replacement``: write it over the damaged one (an upsert; its id must be
        ``doc_id``) and return it; it replicates like any write. Without: remove the damaged
        row entirely (no tombstone, which would delete the peers' good copies) and make
        every replication of this collection pull from the start on its next pull (start
        one, or call ``state.re_sync()``), so a peer's copy comes back; returns ``None``.
        Raises ``DOCUMENT_NOT_FOUND`` if there is no such row and ``DOCUMENT_NOT_DAMAGED``
        (without ``replacement``) if it reads fine.
        """
        self.check_open()
        if replacement is not None:
            data = self.prepare(replacement)
            if data[self.schema.primary_key] != doc_id:
                raise ValidationError(
                    f"The replacement of {doc_id!r} has another primary key.",
                    code="DOCUMENT_PRIMARY_KEY_CHANGED",
                    id=doc_id,
                )
            return await self._write_one(Write(data))
        name = self.name
        await self.storage.write(lambda txn: txn.drop_damaged(name, doc_id))
        return None
    async def cleanup(self, min_age: float | timedelta = DEFAULT_MIN_AGE) -> int:
        """Purge for good the tombstones older than ``min_age`` (seconds or a timedelta;
        default 31 days, as RxDB) that every replication of this collection has pushed past;
        returns how many were purged. A purged id can be inserted again, as a new document.
        See ``docs/cleanup.md`` (what keeps a peer from resurrecting a purged document)."""
        return await purge_tombstones(self, min_age)
