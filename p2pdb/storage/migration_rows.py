"""The SQL of a schema migration: the scratch table, the progress record, the final swap.

A migration of the collection ``name`` writes the migrated rows into a scratch table
``"col_<name>#migrating"`` (``#`` never occurs in a collection name, so it cannot clash
with another collection's table), one batch per transaction, each committed together with
the progress record ``migration:<name>`` of ``p2pdb_info`` (``{"from", "to", "hash",
"after", "done"}``: ``after`` is the last source id done, in id order). A crash loses at
most the batch being written, which the next run redoes; a committed batch is never redone.
The swap (drop the old table, rename the scratch table, rebuild the indexes, store the new
schema, clear the record) is one transaction: before it the collection is entirely at the
old version, after it entirely at the new one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from . import catalog
from .catalog import CollectionInfo, table_name
from .connection import transaction

__all__ = [
    "MigratedRow",
    "abort",
    "begin",
    "count_rows",
    "finish",
    "get_record",
    "record_key",
    "scratch_table",
    "source_batch",
    "source_mark",
    "write_batch",
]

#: ``(id, seq, rev, lwt, deleted, origin, body)``: a row of a collection's table, with its
#: body as stored (a JSON text).
MigratedRow = tuple[str, int, str, float, int, str | None, str]

_COLUMNS = "id, seq, rev, lwt, deleted, origin, body"


def record_key(name: str) -> str:
    """The ``p2pdb_info`` key of the collection's migration progress record."""
    return f"migration:{name}"


def scratch_table(name: str) -> str:
    """The quoted scratch table a migration of ``name`` fills."""
    return f'"col_{name}#migrating"'


def get_record(conn: sqlite3.Connection, name: str) -> dict[str, Any] | None:
    """The progress record of a migration of ``name`` under way, or ``None``."""
    text = catalog.get_info(conn, record_key(name))
    if text is None:
        return None
    record: dict[str, Any] = orjson.loads(text)
    return record


def count_rows(conn: sqlite3.Connection, name: str) -> int:
    """How many rows (tombstones included) the collection's table holds."""
    row = conn.execute(f"SELECT count(*) FROM {table_name(name)}").fetchone()
    return int(row[0])


def source_mark(conn: sqlite3.Connection, name: str) -> list[int]:
    """``[last seq, row count]`` of the collection's table: it changes with any write or
    purge, so a migration can tell that its source changed under it."""
    row = conn.execute(f"SELECT coalesce(max(seq), 0), count(*) FROM {table_name(name)}")
    last, count = row.fetchone()
    return [int(last), int(count)]


def begin(conn: sqlite3.Connection, name: str, record: dict[str, Any]) -> dict[str, Any]:
    """Start (or restart) a migration: an empty scratch table and ``record`` with the
    source's :func:`source_mark` as ``"source"``, in one transaction; that record."""

    def run(conn: sqlite3.Connection) -> dict[str, Any]:
        record["source"] = source_mark(conn, name)
        conn.execute(f"DROP TABLE IF EXISTS {scratch_table(name)}")
        conn.execute(
            f"CREATE TABLE {scratch_table(name)} (id TEXT PRIMARY KEY, "
            "seq INTEGER NOT NULL, rev TEXT NOT NULL, lwt REAL NOT NULL, "
            "deleted INTEGER NOT NULL, origin TEXT, body TEXT NOT NULL, vv TEXT)"
        )
        catalog.set_info(conn, record_key(name), orjson.dumps(record).decode())
        return record

    return transaction(conn, run)


def source_batch(
    conn: sqlite3.Connection, name: str, after: str | None, limit: int
) -> list[MigratedRow]:
    """Up to ``limit`` rows of the collection's table after the id ``after`` (from the
    first with ``None``), in id order."""
    table = table_name(name)
    if after is None:
        sql = f"SELECT {_COLUMNS} FROM {table} ORDER BY id LIMIT ?"
        return conn.execute(sql, (limit,)).fetchall()
    sql = f"SELECT {_COLUMNS} FROM {table} WHERE id > ? ORDER BY id LIMIT ?"
    return conn.execute(sql, (after, limit)).fetchall()


def write_batch(
    conn: sqlite3.Connection,
    name: str,
    rows: Sequence[MigratedRow],
    record: dict[str, Any],
    check: Callable[[sqlite3.Connection], None],
) -> None:
    """Store migrated rows in the scratch table and the new progress record, in one
    transaction (``INSERT OR REPLACE``: a batch redone after a lost commit is harmless);
    ``check(conn)`` runs first (the storage's write checks) and may abort it."""

    def run(conn: sqlite3.Connection) -> None:
        check(conn)
        conn.executemany(
            f"INSERT OR REPLACE INTO {scratch_table(name)} ({_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        catalog.set_info(conn, record_key(name), orjson.dumps(record).decode())

    transaction(conn, run)


def abort(conn: sqlite3.Connection, name: str) -> None:
    """Drop the scratch table and the progress record (the collection stays as it was)."""

    def run(conn: sqlite3.Connection) -> None:
        conn.execute(f"DROP TABLE IF EXISTS {scratch_table(name)}")
        conn.execute("DELETE FROM p2pdb_info WHERE key = ?", (record_key(name),))

    transaction(conn, run)


def finish(
    conn: sqlite3.Connection,
    info: CollectionInfo,
    source: list[int],
    also: Callable[[sqlite3.Connection], None],
) -> bool:
    """The swap, in one transaction: the scratch table becomes the collection's table, its
    indexes are built for the new schema, the catalog holds the new schema, ``also(conn)``
    runs (the replication state), and the progress record goes. False, changing nothing,
    if the source is no longer at the :func:`source_mark` ``source`` (another process
    wrote to it during the migration)."""

    def run(conn: sqlite3.Connection) -> bool:
        if source_mark(conn, info.name) != source:
            return False
        conn.execute(f"DROP TABLE {info.table}")
        conn.execute(f"ALTER TABLE {scratch_table(info.name)} RENAME TO {info.table}")
        catalog.add_vector_column(conn, info.table)  # a scratch table begun by an older p2pdb
        catalog.create_indexes(conn, info)
        catalog.record_schema(conn, info)
        also(conn)
        conn.execute("DELETE FROM p2pdb_info WHERE key = ?", (record_key(info.name),))
        return True

    return transaction(conn, run)
