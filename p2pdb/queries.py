"""Query objects: what ``find``, ``find_one`` and ``count`` return.

They are awaitable (``await todos.find(...)``) and describe the query, so the same object can
be run again or observed live.
"""

from __future__ import annotations

import heapq
import inspect
from collections.abc import AsyncIterator, Generator, Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar

from reactivex import Observable

from .changes import ChangeEvent
from .document import Document, DocumentCollection, Modifier, user_fields
from .errors import ConflictError, QueryError, ValidationError
from .live import Merge, observe_query
from .query import CompiledQuery, compile_query
from .storage import SQLiteStorage, Write
from .streams import iterate
from .update import compile_update
from .values import brief, is_text

__all__ = [
    "QUERY_WRITE_ROUNDS",
    "CountQuery",
    "FindOneQuery",
    "FindQuery",
    "Query",
    "QueryCollection",
    "patcher",
    "write_matches",
]

R = TypeVar("R")


class QueryCollection(DocumentCollection, Protocol):
    """What a query needs from its collection (:class:`~p2pdb.Collection` provides it);
    declared here so that ``queries`` never imports ``collection``."""

    @property
    def storage(self) -> SQLiteStorage:
        """The storage the collection's documents live in."""
        ...

    @property
    def batches(self) -> Observable[list[ChangeEvent]]:
        """Every committed transaction's events for the collection (live queries)."""
        ...

    def check_open(self) -> None:
        """Raise :class:`~p2pdb.errors.ClosedError` if the database was closed."""
        ...

    def prepare(self, data: object) -> dict[str, Any]:
        """A validated deep copy of ``data`` as it will be stored (query-level writes)."""
        ...

    async def bulk_write(
        self, writes: Sequence[Write], origin: str = ...
    ) -> list[dict[str, Any] | ConflictError]:
        """Write validated states in one transaction, each against its expected revision."""
        ...


#: Rounds of retries a query-level write makes for documents changed under it by other
#: writers (each round is one more transaction) before it gives up with ``QUERY_WRITE_RACE``.
QUERY_WRITE_ROUNDS = 20


class Query(Generic[R]):
    """A query over one collection; ``await query`` (or ``await query.exec()``) runs it.

    Building one checks it: a malformed selector, sort, ``skip`` or ``limit`` raises
    :class:`~p2pdb.errors.QueryError` at once (at ``find()`` / ``find_one()`` / ``count()``),
    before anything is awaited. ``lazy`` (a query that cannot be malformed, such as a
    ``find_one`` by id): it is compiled on first use of :attr:`compiled` instead.
    """

    def __init__(
        self,
        collection: QueryCollection,
        selector: Mapping[str, Any] | None = None,
        sort: Sequence[Mapping[str, str]] | None = None,
        skip: int = 0,
        limit: int | None = None,
        *,
        lazy: bool = False,
    ) -> None:
        if type(skip) is not int or skip < 0:
            raise QueryError(
                f"skip must be an integer >= 0, got {brief(skip)}.", code="QUERY_BAD_SKIP"
            )
        if limit is not None and (type(limit) is not int or limit < 0):
            raise QueryError(
                f"limit must be an integer >= 0 or None, got {brief(limit)}.",
                code="QUERY_BAD_LIMIT",
            )
        self.collection = collection
        self._compiled: CompiledQuery | None = None
        if not lazy:  # lazy: nothing to check, compiled on first use (a find_one by id)
            # Compiled before anything is copied: the compiler checks the shapes (a list or
            # a string as selector or sort is a QueryError, never a ValueError from dict()).
            self._compiled = self._compile(selector, sort)
        self.selector: dict[str, Any] = {} if selector is None else dict(selector)
        self.sort = [dict(s) for s in sort or []]
        self.skip = skip
        self.limit = limit

    def _compile(
        self, selector: Mapping[str, Any] | None, sort: Sequence[Mapping[str, str]] | None
    ) -> CompiledQuery:
        schema = self.collection.schema
        return compile_query(
            selector,
            sort,
            primary_key=schema.primary_key,
            field_types=schema.field_types,
            forbidden_paths=schema.encrypted,
        )

    @property
    def compiled(self) -> CompiledQuery:
        """The query compiled to SQL and a Python matcher."""
        if self._compiled is None:
            self._compiled = self._compile(self.selector, self.sort or None)
        return self._compiled

    async def exec(self) -> R:
        """Run the query against the stored documents."""
        raise NotImplementedError

    def __await__(self) -> Generator[Any, None, R]:
        return self.exec().__await__()

    def observe(self) -> Observable[R]:
        """The result now, then again each time a committed write changes it."""
        return observe_query(
            self.exec, self.collection.batches, self.compiled.matches, self._merge()
        )

    def _merge(self) -> Merge[R] | None:
        """How a live result takes in newly inserted documents without a re-run, or
        ``None`` (re-run it)."""
        return None

    def scans(self) -> bool:
        """Whether a re-run reads every match (a Python-evaluated selector, or a sort no
        index gives in order) rather than walking an index to the first ``limit`` rows:
        then a live result merges inserted documents instead of re-running the query."""
        if self.compiled.residual is not None:
            return True
        pk = self.collection.schema.primary_key
        order = [next(iter(s.items())) for s in self.sort]
        if order and order[-1][0] == pk:
            order.pop()
        if not order:
            return False  # the primary key's order
        if len({direction for _, direction in order}) > 1:
            return True
        fields = tuple(f for f, _ in order)
        return fields not in self.collection.schema.indexes

    def merge_sorted(self, result: list[Document], added: list[dict[str, Any]]) -> list[Document]:
        """``result`` (this query's sorted result, starting at the first match) once the
        new matching states ``added`` are written: the same documents a re-run would give,
        in the same order (``sort_key`` is the SQL order, the primary key breaking ties)."""
        key = self.compiled.sort_key
        c = self.collection
        merged = [*result, *(Document(c, state) for state in added)]
        if self.limit is None:
            return sorted(merged, key=key)
        return heapq.nsmallest(self.limit, merged, key=key)

    def watch(self) -> AsyncIterator[R]:
        """``async for result in query.watch()``: like :meth:`observe`; a slow consumer
        skips intermediate results and gets the newest one."""
        return iterate(self.observe(), coalesce=True)

    async def _states(self) -> list[dict[str, Any]]:
        c = self.collection
        c.check_open()
        return await c.storage.query(c.name, self.compiled, self.skip, self.limit)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.collection.name} {self.selector!r} sort={self.sort!r}"
            f" skip={self.skip} limit={self.limit}>"
        )


class FindQuery(Query[list[Document]]):
    """``collection.find(...)``: the matching documents, sorted."""

    async def exec(self) -> list[Document]:
        """Run the query."""
        c = self.collection
        return [Document(c, s) for s in await self._states()]

    def _merge(self) -> Merge[list[Document]] | None:
        return self.merge_sorted if not self.skip and self.scans() else None

    async def patch(self, changes: Mapping[str, Any]) -> list[Document]:
        """Set the given top-level fields on every matching document, in one transaction;
        returns the new Documents in query order (see :func:`write_matches`)."""
        return await write_matches(self, patcher(changes))

    async def modify(self, fn: Modifier) -> list[Document]:
        """Write ``fn(data)`` over every matching document (``fn`` may be async), in one
        transaction; returns the new Documents in query order (see :func:`write_matches`)."""
        return await write_matches(self, fn)

    async def update(self, update: Mapping[str, Any]) -> list[Document]:
        """Apply MongoDB update operators (``{"$set": ..., "$inc": ...}``, see
        :mod:`p2pdb.update`) to every matching document, in one transaction (RxDB's
        ``query.update()``); returns the new Documents in query order."""
        return await write_matches(self, compile_update(update))

    async def remove(self) -> list[Document]:
        """Delete every matching document in one transaction; returns their tombstones."""
        return await write_matches(self, None)


class FindOneQuery(Query[Document | None]):
    """``collection.find_one(id_or_selector)``: the first match, or ``None``."""

    def __init__(
        self,
        collection: QueryCollection,
        selector: Mapping[str, Any] | str | None = None,
        sort: Sequence[Mapping[str, str]] | None = None,
    ) -> None:
        self.doc_id = selector if isinstance(selector, str) else None
        if self.doc_id is not None:
            selector = {collection.schema.primary_key: self.doc_id}
        if selector is not None and not isinstance(selector, Mapping):
            raise QueryError(
                f"find_one takes a primary key string or a selector dict, got {brief(selector)}.",
                code="QUERY_NOT_OBJECT",
            )
        # a lookup by id reads the row without a compiled query (one is compiled if it is
        # observed); an id that is not text (a lone surrogate) is compiled at once, to fail
        # there with QUERY_INVALID_OPERAND
        by_id = sort is None and self.doc_id is not None and is_text(self.doc_id)
        super().__init__(collection, selector, sort, 0, 1, lazy=by_id)

    async def exec(self) -> Document | None:
        """Run the query."""
        c = self.collection
        if self.doc_id is not None:
            c.check_open()
            state = c.storage.get_one(c.name, self.doc_id)
            return None if state is None or state["_deleted"] else Document(c, state)
        states = await self._states()
        return Document(c, states[0]) if states else None

    def _merge(self) -> Merge[Document | None] | None:
        if self.doc_id is not None or not self.scans():
            return None

        def merge(result: Document | None, added: list[dict[str, Any]]) -> Document | None:
            return _first(self.merge_sorted([] if result is None else [result], added))

        return merge

    async def patch(self, changes: Mapping[str, Any]) -> Document | None:
        """Set the given top-level fields on the match; the new Document, or ``None`` when
        nothing matches."""
        return _first(await write_matches(self, patcher(changes)))

    async def modify(self, fn: Modifier) -> Document | None:
        """Write ``fn(data)`` over the match; the new Document, or ``None``."""
        return _first(await write_matches(self, fn))

    async def update(self, update: Mapping[str, Any]) -> Document | None:
        """Apply MongoDB update operators to the match; the new Document, or ``None``."""
        return _first(await write_matches(self, compile_update(update)))

    async def remove(self) -> Document | None:
        """Delete the match; its tombstone, or ``None`` when nothing matches."""
        return _first(await write_matches(self, None))


def _first(docs: list[Document]) -> Document | None:
    return docs[0] if docs else None


def patcher(changes: Mapping[str, Any]) -> Modifier:
    """The modifier of ``patch(changes)``: the current data with ``changes`` set on top."""
    if not isinstance(changes, Mapping):
        raise ValidationError(
            f"patch() takes a dict of fields, got {type(changes).__name__}.",
            code="DOCUMENT_NOT_OBJECT",
        )
    patch = dict(changes)
    return lambda data: {**data, **patch}


async def _next_write(c: QueryCollection, state: dict[str, Any], fn: Modifier | None) -> Write:
    pk = c.schema.primary_key
    data = user_fields(state)
    if fn is None:
        return Write(data, deleted=True, expected=state["_rev"])
    new = fn(data)
    if inspect.isawaitable(new):
        new = await new
    c.schema.check_key_kept(new, state[pk])  # a composite key's fields stay too
    prepared = c.prepare(new)
    if prepared[pk] != state[pk]:
        raise ValidationError(
            f"The primary key cannot change (was {state[pk]!r}, got {prepared[pk]!r}).",
            code="DOCUMENT_PRIMARY_KEY_CHANGED",
            id=state[pk],
        )
    return Write(prepared, expected=state["_rev"])


async def write_matches(query: Query[Any], fn: Modifier | None) -> list[Document]:
    """Write ``fn(data)`` over every document ``query`` matches (``fn=None``: remove them),
    as one ``bulk_write``, that is one transaction with one change event per document.

    Every new state is computed and validated before anything is written: an invalid one
    raises :class:`~p2pdb.errors.ValidationError` and nothing is written. Each write expects
    the revision that was read; a document another writer changed in between is handled
    like ``Document.modify`` does: if it still exists and still matches the selector, ``fn``
    runs again on its new state, in a next transaction (at most :data:`QUERY_WRITE_ROUNDS`
    rounds, then :class:`~p2pdb.errors.ConflictError` ``QUERY_WRITE_RACE``); if it was
    removed or no longer matches, it is left alone and not returned.
    """
    c = query.collection
    pk = c.schema.primary_key
    pending = await query._states()
    order = [s[pk] for s in pending]
    done: dict[str, Document] = {}
    for _ in range(QUERY_WRITE_ROUNDS):
        if not pending:
            break
        writes = [await _next_write(c, state, fn) for state in pending]
        retry: list[dict[str, Any]] = []
        for outcome in await c.bulk_write(writes):
            if not isinstance(outcome, ConflictError):
                done[outcome[pk]] = Document(c, outcome)
                continue
            stored = outcome.document
            if stored is not None and not stored["_deleted"] and query.compiled.matches(stored):
                retry.append(stored)
        pending = retry
    if pending:
        raise ConflictError(
            f"A query-level write on {c.name!r} lost {QUERY_WRITE_ROUNDS} races in a row "
            "against other writers of the same documents.",
            code="QUERY_WRITE_RACE",
            ids=[s[pk] for s in pending],
        )
    return [done[i] for i in order if i in done]


class CountQuery(Query[int]):
    """``collection.count(...)``: how many documents match."""

    async def exec(self) -> int:
        """Run the query."""
        c = self.collection
        c.check_open()
        return await c.storage.count(c.name, self.compiled)
