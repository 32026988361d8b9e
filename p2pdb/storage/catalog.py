"""The file's tables: creating them, the collection catalog, indexes, and info records.

A file holds ``p2pdb_info`` (key/value records: the file token, the change sequence, plugin
records), ``p2pdb_collections`` (the catalog: every collection's schema), one
``col_<name>`` table per collection, and ``p2pdb_replication`` (see replication_rows.py).
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import NotFoundError, SchemaError, ValidationError
from ..query import path_expression
from ..schema import Schema
from ..tokens import random_token
from . import local_rows
from .base import BodyCodec

__all__ = [
    "Catalog",
    "CollectionInfo",
    "add_vector_column",
    "create_indexes",
    "drop",
    "get_info",
    "init_file",
    "is_stored",
    "record_schema",
    "set_info",
    "stored_schemas",
    "stored_version",
    "table_name",
]

_COLLECTION_NAME = re.compile(r"^[a-z][a-z0-9_\-]{0,62}$")

_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS p2pdb_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS p2pdb_collections (
    name TEXT PRIMARY KEY, version INTEGER NOT NULL, schema TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS p2pdb_replication (
    replication_id TEXT NOT NULL, item TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (replication_id, item));
"""
# p2pdb_replication is a rowid table since assumed master states became markers (files
# made before keep their WITHOUT ROWID table; both read the same): a WITHOUT ROWID b-tree
# stores ~1 KB full copies 2.8x less densely (measured: 27 vs 10 MB for 6,000 copies).


def table_name(collection: str) -> str:
    """The quoted SQLite table of a collection."""
    return f'"col_{collection}"'


@dataclass
class CollectionInfo:
    """An opened collection: its table, schema and body codec."""

    name: str
    schema: Schema
    codec: BodyCodec | None = None
    table: str = field(init=False)

    def __post_init__(self) -> None:
        self.table = table_name(self.name)


def init_file(conn: sqlite3.Connection) -> str:
    """Create the core tables if missing; the file's token (created on first use)."""
    conn.executescript(_SCHEMA_SQL)
    local_rows.create_table(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        token = get_info(conn, "token")
        if token is None:
            token = random_token()
            set_info(conn, "token", token)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return token


def get_info(conn: sqlite3.Connection, key: str) -> str | None:
    """A value of ``p2pdb_info``."""
    row = conn.execute("SELECT value FROM p2pdb_info WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def set_info(conn: sqlite3.Connection, key: str, value: str) -> None:
    """Store a value of ``p2pdb_info`` (inside the caller's transaction)."""
    conn.execute("INSERT OR REPLACE INTO p2pdb_info (key, value) VALUES (?, ?)", (key, value))


def stored_schemas(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """The schema of every collection stored in the file."""
    rows = conn.execute("SELECT name, schema FROM p2pdb_collections")
    return {name: orjson.loads(schema) for name, schema in rows}


def is_stored(conn: sqlite3.Connection, name: str) -> bool:
    """True if the file's catalog holds the collection ``name``."""
    sql = "SELECT 1 FROM p2pdb_collections WHERE name = ?"
    return conn.execute(sql, (name,)).fetchone() is not None


def _create(conn: sqlite3.Connection, info: CollectionInfo) -> None:
    name, schema = info.name, info.schema
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute(
            "SELECT version, hash FROM p2pdb_collections WHERE name = ?", (name,)
        ).fetchone()
        if row is not None and row[0] == schema.version and row[1] != schema.hash:
            raise SchemaError(
                f"Collection {name!r} was created with a different schema of version "
                f"{schema.version}. Bump the schema's version to change it.",
                code="SCHEMA_MISMATCH",
                collection=name,
            )
        if row is not None and row[0] > schema.version:
            raise SchemaError(
                f"Collection {name!r} is stored at schema version {row[0]}, newer than the "
                f"given version {schema.version}: an older program cannot open it.",
                code="MIGRATION_VERSION_LOWER",
                collection=name,
                stored_version=row[0],
                version=schema.version,
            )
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {info.table} (id TEXT PRIMARY KEY, "
            "seq INTEGER NOT NULL, rev TEXT NOT NULL, lwt REAL NOT NULL, "
            "deleted INTEGER NOT NULL, origin TEXT, body TEXT NOT NULL, vv TEXT)"
        )
        add_vector_column(conn, info.table)
        create_indexes(conn, info)
        record_schema(conn, info)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def add_vector_column(conn: sqlite3.Connection, table: str) -> None:
    """Give a table of an older file the ``vv`` column (causal vectors, ``p2pdb.causal``;
    NULL in old rows: no causal information), in the caller's transaction. SQLite adds a
    nullable column without rewriting the table."""
    if not any(row[1] == "vv" for row in conn.execute(f"PRAGMA table_info({table})")):
        conn.execute(f"ALTER TABLE {table} ADD COLUMN vv TEXT")


def create_indexes(conn: sqlite3.Connection, info: CollectionInfo) -> None:
    """Create the ``seq`` index and the schema's indexes of a collection's table (if
    missing), in the caller's transaction."""
    name, schema = info.name, info.schema
    conn.execute(f'CREATE INDEX IF NOT EXISTS "ix_{name}__seq" ON {info.table} (seq)')
    for fields in schema.indexes:
        # the primary key ends every index, as in RxDB: it is every sort's tiebreaker
        exprs = ", ".join(
            [path_expression(f, primary_key=schema.primary_key) for f in fields] + ["id"]
        )
        ix = "ix_" + name + "__" + "__".join(fields).replace(".", "_")
        conn.execute(
            f'CREATE INDEX IF NOT EXISTS "{ix}" ON {info.table} ({exprs}) WHERE deleted = 0'
        )


def record_schema(conn: sqlite3.Connection, info: CollectionInfo) -> None:
    """Store the collection's schema, version and hash in the catalog (caller's
    transaction)."""
    schema = info.schema
    conn.execute(
        "INSERT OR REPLACE INTO p2pdb_collections VALUES (?, ?, ?, ?)",
        (info.name, schema.version, orjson.dumps(schema.raw).decode(), schema.hash),
    )


def stored_version(conn: sqlite3.Connection, name: str) -> tuple[int, dict[str, Any]] | None:
    """The stored ``(version, schema)`` of the collection ``name``, or ``None``."""
    sql = "SELECT version, schema FROM p2pdb_collections WHERE name = ?"
    row = conn.execute(sql, (name,)).fetchone()
    return None if row is None else (int(row[0]), orjson.loads(row[1]))


def drop(conn: sqlite3.Connection, name: str) -> bool:
    """Drop a collection's table (its indexes go with it) and catalog row, in the caller's
    transaction; False if the file has no such collection."""
    if not is_stored(conn, name):
        return False
    conn.execute(f"DROP TABLE IF EXISTS {table_name(name)}")
    conn.execute("DELETE FROM p2pdb_collections WHERE name = ?", (name,))
    return True


class Catalog:
    """The collections opened on one storage, by name."""

    def __init__(self) -> None:
        self._opened: dict[str, CollectionInfo] = {}
        self._removed: set[str] = set()  # removed by this storage: used, they say so

    def prepare(self, name: str, schema: Schema, codec: BodyCodec | None) -> CollectionInfo:
        """Check the name; the info to pass to :meth:`create` and then :meth:`add`."""
        if not _COLLECTION_NAME.match(name):
            raise ValidationError(
                f"Collection name {name!r} must start with a-z and hold only a-z, 0-9, '_' "
                "or '-' (at most 63 characters).",
                code="COLLECTION_NAME",
                name=name,
            )
        return CollectionInfo(name, schema, codec)

    @staticmethod
    def create(conn: sqlite3.Connection, info: CollectionInfo) -> None:
        """In the writer thread: create the table and indexes in their own transaction, or
        raise ``SCHEMA_MISMATCH``."""
        _create(conn, info)

    def add(self, info: CollectionInfo) -> None:
        """Remember an opened collection."""
        self._opened[info.name] = info
        self._removed.discard(info.name)

    def remove(self, name: str) -> None:
        """Forget a collection whose table was dropped: :meth:`get` then raises
        ``COLLECTION_REMOVED`` until it is added again."""
        self._opened.pop(name, None)
        self._removed.add(name)

    def get(self, name: str) -> CollectionInfo:
        """An opened collection, or :class:`NotFoundError` (``COLLECTION_NOT_FOUND``, or
        ``COLLECTION_REMOVED`` after :meth:`remove`)."""
        try:
            return self._opened[name]
        except KeyError:
            if name in self._removed:
                raise NotFoundError(
                    f"The collection {name!r} was removed (db.remove_collection()); add it "
                    "again with add_collection() and use the new Collection object.",
                    code="COLLECTION_REMOVED",
                    name=name,
                ) from None
            raise NotFoundError(
                f"No collection {name!r} in this database; add it with add_collection().",
                code="COLLECTION_NOT_FOUND",
                name=name,
            ) from None

    def find(self, name: str) -> CollectionInfo | None:
        """An opened collection or ``None``."""
        return self._opened.get(name)

    def opened(self) -> list[CollectionInfo]:
        """Every opened collection (a copy: safe to iterate from another thread)."""
        return list(self._opened.values())
