"""Document: a read-only snapshot of one stored document, with helpers to write new states."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, Protocol

import orjson
import reactivex
from reactivex import Observable
from reactivex import operators as ops

from .changes import ChangeEvent
from .errors import ValidationError
from .schema import Schema

__all__ = ["Document", "DocumentCollection", "Modifier", "user_fields"]

#: What ``Document.modify`` takes: the current user fields in, the next ones out (may be async).
Modifier = Callable[[dict[str, Any]], dict[str, Any] | Awaitable[dict[str, Any]]]


class DocumentCollection(Protocol):
    """What a :class:`Document` needs from its collection (:class:`~p2pdb.Collection`
    provides it). Declared here, below the collection, so that ``document`` never imports
    ``collection``: the collection builds documents, documents only call these methods."""

    @property
    def name(self) -> str:
        """The collection's name."""
        ...

    @property
    def schema(self) -> Schema:
        """The collection's schema (for the primary key)."""
        ...

    @property
    def changes(self) -> Observable[ChangeEvent]:
        """Every committed write to the collection, one event per document."""
        ...

    def stored_state(self, doc_id: str) -> dict[str, Any] | None:
        """The stored state of one document (tombstones included), or ``None``."""
        ...

    async def modify_document(self, doc: Document, fn: Modifier) -> Document:
        """Write ``fn(data)`` over ``doc``, again on newer states until it applies."""
        ...

    async def replace_document(self, doc: Document, data: Mapping[str, Any]) -> Document:
        """Write ``data`` as the next state of exactly ``doc``'s revision."""
        ...

    async def remove_document(self, doc_id: str) -> Document:
        """Write a tombstone over the latest state of ``doc_id``."""
        ...


def user_fields(state: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of a stored state without p2pdb's underscore fields.

    ``k[:1]``, not ``k[0]``: the empty string is a valid JSON key, stored and returned like
    any other field (``k[0]`` raised IndexError on it)."""
    copy: dict[str, Any] = orjson.loads(
        orjson.dumps({k: v for k, v in state.items() if k[:1] != "_"})
    )
    return copy


class Document(Mapping[str, Any]):
    """One state of one document, as it was when read. Never changes; writes return new ones.

    Read fields with ``doc["field"]`` or ``doc.get("field")``; ``doc.to_dict()`` gives a
    deep copy of the user fields.
    """

    __slots__ = ("_collection", "_state")

    def __init__(self, collection: DocumentCollection, state: dict[str, Any]) -> None:
        self._collection = collection
        self._state = state

    # -- reading ---------------------------------------------------------------------------

    @property
    def id(self) -> str:
        """The primary key value."""
        value: str = self._state[self._collection.schema.primary_key]
        return value

    @property
    def revision(self) -> str:
        """The revision, ``"<height>-<token>"``; the height grows by one per write."""
        value: str = self._state["_rev"]
        return value

    @property
    def deleted(self) -> bool:
        """True for the state left by a removal (a tombstone)."""
        return bool(self._state["_deleted"])

    @property
    def collection(self) -> DocumentCollection:
        """The collection the document belongs to (a :class:`~p2pdb.Collection`)."""
        return self._collection

    def __getitem__(self, key: str) -> Any:
        if type(key) is not str or key[:1] == "_":  # so doc.get(5) is None, not TypeError
            raise KeyError(key)
        return self._state[key]

    def __iter__(self) -> Iterator[str]:
        return (k for k in self._state if k[:1] != "_")

    def __len__(self) -> int:
        return sum(1 for k in self._state if k[:1] != "_")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Document):
            return self._state == other._state
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Document {self._collection.name}/{self.id} rev={self.revision}>"

    def to_dict(self, *, include_meta: bool = False) -> dict[str, Any]:
        """A deep copy of the user fields; with ``include_meta``, also ``_deleted``, ``_rev``
        and ``_meta``."""
        if include_meta:
            result: dict[str, Any] = orjson.loads(orjson.dumps(self._state))
            return result
        return user_fields(self._state)

    # -- writing ---------------------------------------------------------------------------

    async def patch(self, changes: Mapping[str, Any]) -> Document:
        """Set the given top-level fields on the latest state; returns the new Document.
        ``changes`` must be a dict (else ``DOCUMENT_NOT_OBJECT``, and nothing is written)."""
        if not isinstance(changes, Mapping):
            raise ValidationError(
                f"patch() takes a dict of fields to set, got {type(changes).__name__}.",
                code="DOCUMENT_NOT_OBJECT",
            )
        patch = dict(changes)
        return await self.modify(lambda data: {**data, **patch})

    async def modify(self, fn: Modifier) -> Document:
        """Write ``fn(current data)``; if another write got in first, run ``fn`` again on the
        newer state, until it applies. ``fn`` may be async. Returns the new Document.
        A ``fn`` that is not callable raises ``ARGUMENT_INVALID``."""
        if not callable(fn):
            raise ValidationError(
                f"modify() takes a function of the current data, got {type(fn).__name__}.",
                code="ARGUMENT_INVALID",
            )
        return await self._collection.modify_document(self, fn)

    async def replace(self, data: Mapping[str, Any]) -> Document:
        """Write ``data`` as the next state of this revision exactly: raises
        :class:`~p2pdb.errors.ConflictError` (with the stored state) if the document changed
        since this snapshot was read."""
        return await self._collection.replace_document(self, data)

    def observe(self) -> Observable[Document]:
        """This document's latest stored state now, then each new state (a removal gives a
        Document with ``deleted`` True)."""
        return observe_document(self._collection, self.id)

    async def remove(self) -> Document:
        """Delete the document (write a tombstone); returns the tombstone's Document."""
        return await self._collection.remove_document(self.id)


def observe_document(collection: DocumentCollection, doc_id: str) -> Observable[Document]:
    """The stored state of one document now, then each committed new state."""

    def current() -> Observable[Document]:
        state = collection.stored_state(doc_id)
        now = reactivex.empty() if state is None else reactivex.just(Document(collection, state))

        def same_id(event: ChangeEvent) -> bool:
            return event.id == doc_id

        def to_document(event: ChangeEvent) -> Document:
            return Document(collection, event.document)

        later: Observable[Document] = collection.changes.pipe(
            ops.filter(same_id), ops.map(to_document)
        )

        def revision(doc: Document) -> str:
            return doc.revision

        return reactivex.concat(now, later).pipe(ops.distinct_until_changed(revision))

    return reactivex.defer(lambda _scheduler: current())
