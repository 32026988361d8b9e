"""Local document rows: the one module that knows the ``p2pdb_local`` table.

Local documents (RxDB's ``insertLocal`` / ``getLocal`` ...) are small JSON values keyed by
``(parent, id)``, where ``parent`` is ``""`` for the database's own and a collection's name for
that collection's. They are not documents: no change sequence, no tombstones, no replication,
no codec (they are stored as plain JSON, never encrypted). Every function here runs on a
connection given by the caller: the writer's inside a transaction, or the reader's.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson

from ..errors import ConflictError
from ..tokens import random_token
from .base import revision_height

__all__ = [
    "DATABASE_PARENT",
    "create_table",
    "delete",
    "delete_parent",
    "get",
    "list_rows",
    "put",
]

#: The ``parent`` of the database's own local documents (collection names are never empty).
DATABASE_PARENT = ""

_TABLE_SQL = (
    "CREATE TABLE IF NOT EXISTS p2pdb_local (parent TEXT NOT NULL, id TEXT NOT NULL, "
    "rev TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (parent, id)) WITHOUT ROWID"
)


def create_table(conn: sqlite3.Connection) -> None:
    """Create the table if missing (files written before local documents have none)."""
    conn.execute(_TABLE_SQL)


def _row(doc_id: str, rev: str, data: str) -> dict[str, Any]:
    return {"id": doc_id, "data": orjson.loads(data), "_rev": rev}


def get(conn: sqlite3.Connection, parent: str, doc_id: str) -> dict[str, Any] | None:
    """``{"id", "data", "_rev"}`` of one local document, or ``None``."""
    row = conn.execute(
        "SELECT rev, data FROM p2pdb_local WHERE parent = ? AND id = ?", (parent, doc_id)
    ).fetchone()
    return None if row is None else _row(doc_id, row[0], row[1])


def list_rows(conn: sqlite3.Connection, parent: str) -> list[dict[str, Any]]:
    """Every local document of ``parent``, by id."""
    rows = conn.execute(
        "SELECT id, rev, data FROM p2pdb_local WHERE parent = ? ORDER BY id", (parent,)
    )
    return [_row(*row) for row in rows]


def put(
    conn: sqlite3.Connection,
    parent: str,
    doc_id: str,
    data: dict[str, Any],
    *,
    insert: bool,
    expected: str | None = None,
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Write a local document (in the caller's transaction): ``(previous, new)``. With
    ``insert``, an existing one raises :class:`~p2pdb.errors.ConflictError`
    (``LOCAL_DOCUMENT_EXISTS``); with ``expected`` (a revision), a stored one at another
    revision, or none, raises ``LOCAL_DOCUMENT_CONFLICT``. Then nothing is written."""
    previous = get(conn, parent, doc_id)
    if expected is not None and (previous is None or previous["_rev"] != expected):
        raise ConflictError(
            f"The local document {doc_id!r} changed since revision {expected!r} was read.",
            code="LOCAL_DOCUMENT_CONFLICT",
            document=previous,
            id=doc_id,
        )
    if insert and previous is not None:
        raise ConflictError(
            f"A local document {doc_id!r} already exists; use upsert_local() to replace it.",
            code="LOCAL_DOCUMENT_EXISTS",
            document=previous,
            id=doc_id,
        )
    height = revision_height(previous["_rev"]) if previous is not None else 0
    rev = f"{height + 1}-{random_token()}"
    conn.execute(
        "INSERT OR REPLACE INTO p2pdb_local (parent, id, rev, data) VALUES (?, ?, ?, ?)",
        (parent, doc_id, rev, orjson.dumps(data).decode()),
    )
    return previous, {"id": doc_id, "data": data, "_rev": rev}


def delete(conn: sqlite3.Connection, parent: str, doc_id: str) -> dict[str, Any] | None:
    """Delete one local document (in the caller's transaction); what it was, or ``None``."""
    previous = get(conn, parent, doc_id)
    if previous is not None:
        conn.execute("DELETE FROM p2pdb_local WHERE parent = ? AND id = ?", (parent, doc_id))
    return previous


def delete_parent(conn: sqlite3.Connection, parent: str) -> None:
    """Delete every local document of ``parent`` (in the caller's transaction)."""
    conn.execute("DELETE FROM p2pdb_local WHERE parent = ?", (parent,))


