"""What a replication needs of the collection it keeps in sync (the fork), as a Protocol.

Typed against this instead of :class:`p2pdb.collection.Collection`, the replication package
never imports the collection module, so no import circle can form through it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from reactivex import Observable

from ..changes import ChangeEvent
from ..conflicts import ConflictHandler
from ..schema import Schema
from ..storage import SQLiteStorage

__all__ = ["ForkCollection", "ForkDatabase"]


class ForkDatabase(Protocol):
    """The database of a fork: replication reads and writes through its storage."""

    @property
    def storage(self) -> SQLiteStorage:
        """The storage that holds the documents and the replication state."""
        ...

    def check_open(self) -> None:
        """Raise :class:`~p2pdb.errors.ClosedError` if the database was closed."""
        ...

    def close_with_collection(
        self, name: str, closer: Callable[[], Awaitable[None]]
    ) -> Callable[[], None]:
        """Have the database's ``close()`` and ``remove_collection(name)`` await
        ``closer()`` first; returns the function that unregisters it."""
        ...

    def close_with(self, closer: Callable[[], Awaitable[None]]) -> Callable[[], None]:
        """Have the database's ``close()`` await ``closer()`` first; returns the function
        that unregisters it."""
        ...


class ForkCollection(Protocol):
    """The collection a fork replicates (a :class:`p2pdb.collection.Collection` is one)."""

    @property
    def name(self) -> str:
        """The collection's name (part of the replication's key)."""
        ...

    @property
    def schema(self) -> Schema:
        """Its schema: the primary key identifies replicated documents."""
        ...

    @property
    def conflict_handler(self) -> ConflictHandler:
        """Decides equality of states and resolves push conflicts."""
        ...

    @property
    def database(self) -> ForkDatabase:
        """The database the collection belongs to."""
        ...

    @property
    def batches(self) -> Observable[list[ChangeEvent]]:
        """Every committed transaction's events: upstream wakes up on them."""
        ...

    def prepare(self, data: object) -> dict[str, Any]:
        """A validated copy of ``data`` as it would be stored (raises ValidationError)."""
        ...
