"""Query objects: what ``find``, ``find_one`` and ``count`` return.

They are awaitable (``await todos.find(...)``) and describe the query, so the same object can
be run again or observed live.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator, Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar

from reactivex import Observable

from .changes import ChangeEvent
from .document import Document, DocumentCollection
from .errors import QueryError
from .live import observe_query
from .query import CompiledQuery, compile_query
from .storage import SQLiteStorage
from .streams import iterate
from .values import brief

__all__ = ["CountQuery", "FindOneQuery", "FindQuery", "Query", "QueryCollection"]

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


class Query(Generic[R]):
    """A query over one collection; ``await query`` (or ``await query.exec()``) runs it.

    Building one checks it: a malformed selector, sort, ``skip`` or ``limit`` raises
    :class:`~p2pdb.errors.QueryError` at once (at ``find()`` / ``find_one()`` / ``count()``),
    before anything is awaited.
    """

    def __init__(
        self,
        collection: QueryCollection,
        selector: Mapping[str, Any] | None = None,
        sort: Sequence[Mapping[str, str]] | None = None,
        skip: int = 0,
        limit: int | None = None,
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
        schema = collection.schema
        # Compiled before anything is copied: the compiler checks the shapes (a list or a
        # string as selector or sort is a QueryError, never a ValueError from dict()).
        self.compiled: CompiledQuery = compile_query(
            selector,
            sort,
            primary_key=schema.primary_key,
            field_types=schema.field_types,
            forbidden_paths=schema.encrypted,
        )
        self.collection = collection
        self.selector: dict[str, Any] = {} if selector is None else dict(selector)
        self.sort = [dict(s) for s in sort or []]
        self.skip = skip
        self.limit = limit

    async def exec(self) -> R:
        """Run the query against the stored documents."""
        raise NotImplementedError

    def __await__(self) -> Generator[Any, None, R]:
        return self.exec().__await__()

    def observe(self) -> Observable[R]:
        """The result now, then again each time a committed write changes it."""
        return observe_query(self.exec, self.collection.batches, self.compiled.matches)

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
        super().__init__(collection, selector, sort, 0, 1)

    async def exec(self) -> Document | None:
        """Run the query."""
        c = self.collection
        if self.doc_id is not None:
            c.check_open()
            state = c.storage.get_one(c.name, self.doc_id)
            return None if state is None or state["_deleted"] else Document(c, state)
        states = await self._states()
        return Document(c, states[0]) if states else None


class CountQuery(Query[int]):
    """``collection.count(...)``: how many documents match."""

    async def exec(self) -> int:
        """Run the query."""
        c = self.collection
        c.check_open()
        return await c.storage.count(c.name, self.compiled)
