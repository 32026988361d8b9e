"""``remove_database(path)``: delete a database file with its ``-wal`` and ``-shm`` files
(RxDB's ``removeRxDatabase``)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

from .errors import StorageError, ValidationError
from .storage import SQLiteStorage

__all__ = ["remove_database"]

_SQLITE_HEADER = b"SQLite format 3\x00"
_SIDE_FILES = ("-wal", "-shm", "-journal")


def _is_p2pdb_file(path: str) -> bool:
    """True for an empty file, or an SQLite file with p2pdb's tables (read only)."""
    if os.path.getsize(path) == 0:
        return True
    with open(path, "rb") as file:
        if file.read(len(_SQLITE_HEADER)) != _SQLITE_HEADER:
            return False
    conn = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'p2pdb_info'"
        ).fetchone()
        return row is not None
    except sqlite3.Error:
        return False
    finally:
        conn.close()


async def remove_database(path: str | os.PathLike[str]) -> list[str]:
    """Delete the database file ``path`` and its ``-wal``, ``-shm`` (and ``-journal``)
    files; returns the paths removed (``[]`` when there was no file).

    Refuses, changing nothing, with :class:`~p2pdb.errors.StorageError` ``DATABASE_OPEN``
    while a database of this process has the file open (close it first), and with
    :class:`~p2pdb.errors.ValidationError` ``DATABASE_NOT_P2PDB`` for a file that is not a
    p2pdb database. Other processes are not detected: one that still has the file open
    keeps working on the deleted file, and its writes are lost.
    """
    name = os.fspath(path)
    if name == ":memory:":
        raise ValidationError(
            "A ':memory:' database disappears when it is closed; there is no file to remove.",
            code="DATABASE_NOT_P2PDB",
            path=name,
        )
    return await asyncio.to_thread(_remove, name, SQLiteStorage.open_paths())


def _remove(name: str, open_paths: set[str]) -> list[str]:
    """The file work of :func:`remove_database`, off the event loop."""
    if os.path.realpath(name) in open_paths:
        raise StorageError(
            f"The database {name!r} is open in this process; close it (await db.close()) "
            "before removing it.",
            code="DATABASE_OPEN",
            path=name,
        )
    if not os.path.isfile(name):
        return []
    if not _is_p2pdb_file(name):
        raise ValidationError(
            f"{name!r} is not a p2pdb database; it was not removed.",
            code="DATABASE_NOT_P2PDB",
            path=name,
        )
    removed = []
    for candidate in [name, *(name + suffix for suffix in _SIDE_FILES)]:
        try:
            os.remove(candidate)
        except FileNotFoundError:
            continue
        removed.append(candidate)
    return removed
