"""Closing with the database: a replication stops when its database closes.

A :class:`p2pdb.Database` has ``close_with(closer)`` and ``check_open()``; the replication
package is typed against a small Protocol (:class:`~p2pdb.replication.fork.ForkDatabase`)
that need not have them, so these helpers use them when they are there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

__all__ = ["check_database_open", "close_with_database"]


def check_database_open(database: object) -> None:
    """Raise ``DATABASE_CLOSED`` (:class:`~p2pdb.errors.ClosedError`) if ``database`` was
    closed (databases without ``check_open`` are taken as open)."""
    check = getattr(database, "check_open", None)
    if callable(check):
        check()


def close_with_database(
    database: object, closer: Callable[[], Awaitable[None]]
) -> Callable[[], None]:
    """Have ``database.close()`` await ``closer()`` first; returns the function that
    unregisters it (a no-op for databases without ``close_with``)."""
    register = getattr(database, "close_with", None)
    if not callable(register):
        return lambda: None
    unregister: Callable[[], None] = register(closer)
    return unregister
