"""SQLite storage: documents, their revisions, the change sequence and replication state.

Writes go through one aiosqlite connection (one writer thread): each call of
:meth:`SQLiteStorage.write` runs a whole function in that thread inside one ``BEGIN
IMMEDIATE`` transaction, so a bulk write costs one thread hop, not one per row. Reads run
on the event loop through a second connection: SQLite in WAL mode lets readers run beside
the writer, and a point read costs a few microseconds, far less than a thread hop.
Unbounded queries (no ``limit``) and counts go to the writer thread so a long scan never
blocks the loop.

Change events are handed to ``on_commit`` from the writer thread right after ``COMMIT``
(with ``call_soon_threadsafe``), so they are emitted in commit order, before the writing
task resumes.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import aiosqlite
import orjson

from .changes import LOCAL, ChangeEvent, Operation
from .errors import (
    ClosedError,
    ConflictError,
    EncryptionError,
    NotFoundError,
    SchemaError,
    StorageError,
    ValidationError,
)
from .query import CompiledQuery, path_expression
from .schema import Schema
from .tokens import random_token

__all__ = [
    "ABSENT",
    "ANY_REVISION",
    "BodyCodec",
    "SQLiteStorage",
    "Write",
    "WriteTxn",
    "table_name",
]

T = TypeVar("T")

_COLLECTION_NAME = re.compile(r"^[a-z][a-z0-9_\-]{0,62}$")
_ID_CHUNK = 500  # ids per "IN (...)" lookup, well under SQLite's variable limit
_BUSY_TIMEOUT_MS = 10_000

_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS p2pdb_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS p2pdb_collections (
    name TEXT PRIMARY KEY, version INTEGER NOT NULL, schema TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS p2pdb_replication (
    replication_id TEXT NOT NULL, item TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (replication_id, item)) WITHOUT ROWID;
"""


class _AnyRevision:
    def __repr__(self) -> str:
        return "ANY_REVISION"


#: ``Write.expected`` value meaning "write whatever is stored" (an upsert).
ANY_REVISION: Any = _AnyRevision()


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


#: ``Write.expected`` value meaning "no row for this id at all, not even a tombstone"
#: (replication writes a document it found missing; a tombstone written meanwhile wins).
ABSENT: Any = _Absent()


class BodyCodec(Protocol):
    """Transforms document bodies on their way to and from disk (encryption uses it).

    ``encode`` must not change fields that are indexed or queried. The same codec also
    encodes the ``doc:<id>`` items of replication state (documents in wire form) of
    replications keyed ``"<collection>:..."``. Neither method may change its argument.
    """

    def encode(self, collection: str, doc_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """The form to store."""
        ...

    def decode(self, collection: str, doc_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """The form to hand out; raise :class:`~p2pdb.errors.EncryptionError` on tampering."""
        ...


@dataclass(slots=True)
class Write:
    """One document to write.

    ``document`` holds the user fields (the primary key included). ``expected`` is the
    revision the write is based on: a ``_rev`` string (the stored one must match), ``None``
    (the document must not exist, or be deleted) or :data:`ANY_REVISION`.
    """

    document: dict[str, Any]
    deleted: bool = False
    expected: Any = ANY_REVISION


def table_name(collection: str) -> str:
    """The quoted SQLite table of a collection."""
    return f'"col_{collection}"'


def _revision_token(body: bytes, deleted: bool) -> str:
    # Content-derived, so two peers writing the same state at the same height agree; a
    # fingerprint, not a security hash (CRC-32 + Adler-32: 64 bits in well under 1 µs).
    crc = zlib.crc32(b"\x01" if deleted else b"\x00", zlib.crc32(body))
    return f"{crc:08x}{zlib.adler32(body):08x}"


def revision_height(rev: str | None) -> int:
    """The height of a ``"<height>-<token>"`` revision (0 for none)."""
    return int(rev.split("-", 1)[0]) if rev else 0


@dataclass
class _CollectionInfo:
    name: str
    table: str
    schema: Schema
    codec: BodyCodec | None = None


class WriteTxn:
    """The handle a write function gets: runs in the writer thread inside one transaction."""

    def __init__(self, storage: SQLiteStorage, conn: sqlite3.Connection) -> None:
        self._storage = storage
        self.conn = conn
        self.events: list[ChangeEvent] = []
        row = dict(conn.execute("SELECT key, value FROM p2pdb_info WHERE key IN ('seq','lwt')"))
        self._seq = int(row.get("seq", 0))
        # lwt: ms with two decimals, as RxDB, kept as an integer count of 1/100 ms so it is
        # exact and strictly increasing, even if the clock goes back
        self._lwt_centi = round(float(row.get("lwt", 0)) * 100)
        self._start_seq = self._seq

    def get(self, collection: str, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Stored states (tombstones included) of the given ids that exist."""
        return self._storage._get_many(self.conn, collection, list(ids))

    def put(
        self, collection: str, writes: Sequence[Write], origin: str = LOCAL
    ) -> list[dict[str, Any] | ConflictError]:
        """Write documents; per write, its new state or the :class:`ConflictError` it hit.

        Writes of the same id in one call apply in order. Conflicting writes change nothing.
        """
        info = self._storage._collection(collection)
        ids = list({w.document[info.schema.primary_key] for w in writes})
        # lenient: a stored state that does not decode can still be overwritten
        current = self._storage._get_many(self.conn, collection, ids, lenient=True)
        results: list[dict[str, Any] | ConflictError] = []
        rows = []
        pk = info.schema.primary_key
        now_centi = int(time.time() * 100_000)
        for w in writes:
            doc_id = w.document[pk]
            prev = current.get(doc_id)
            error = _check_expected(collection, doc_id, prev, w.expected)
            if error is not None:
                results.append(error)
                continue
            self._seq += 1
            self._lwt_centi = max(now_centi, self._lwt_centi + 1)
            lwt = self._lwt_centi / 100
            stored_body = (
                info.codec.encode(collection, doc_id, w.document) if info.codec else w.document
            )
            raw = orjson.dumps(stored_body)
            height = int(prev["_rev"].split("-", 1)[0]) + 1 if prev else 1
            rev = f"{height}-{_revision_token(raw, w.deleted)}"
            state = dict(w.document)
            state["_deleted"] = w.deleted
            state["_rev"] = rev
            state["_meta"] = {"lwt": lwt}
            rows.append((doc_id, self._seq, rev, lwt, int(w.deleted), origin, raw.decode()))
            current[doc_id] = state
            results.append(state)
            if w.deleted:
                operation: Operation = "DELETE"
            elif prev is None or prev["_deleted"]:
                operation = "INSERT"
            else:
                operation = "UPDATE"
            self.events.append(
                ChangeEvent(operation, collection, doc_id, state, prev, origin, self._seq)
            )
        if rows:
            self.conn.executemany(
                f"INSERT INTO {info.table} (id, seq, rev, lwt, deleted, origin, body) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET seq=excluded.seq, "
                "rev=excluded.rev, lwt=excluded.lwt, deleted=excluded.deleted, "
                "origin=excluded.origin, body=excluded.body",
                rows,
            )
        return results

    def get_meta(self, replication_id: str, items: Iterable[str]) -> dict[str, Any]:
        """Replication state values (JSON) stored under ``replication_id``."""
        return self._storage._get_meta(self.conn, replication_id, list(items))

    def set_meta(self, replication_id: str, values: Mapping[str, Any]) -> None:
        """Store replication state values (JSON) in this transaction."""
        codec = self._storage._meta_codec(replication_id)
        if codec is not None:
            values = {k: codec(k, v, True) for k, v in values.items()}
        self.conn.executemany(
            "INSERT OR REPLACE INTO p2pdb_replication (replication_id, item, value) "
            "VALUES (?, ?, ?)",
            [(replication_id, k, orjson.dumps(v).decode()) for k, v in values.items()],
        )

    def delete_meta(self, replication_id: str) -> None:
        """Forget every value of one replication (it will start from scratch)."""
        self.conn.execute(
            "DELETE FROM p2pdb_replication WHERE replication_id = ?", (replication_id,)
        )

    def _finish(self) -> None:
        if self._seq != self._start_seq:
            self._storage._note_own_seqs(self._start_seq + 1, self._seq)
            self.conn.executemany(
                "INSERT OR REPLACE INTO p2pdb_info (key, value) VALUES (?, ?)",
                [("seq", str(self._seq)), ("lwt", repr(self._lwt_centi / 100))],
            )


def _check_expected(
    collection: str, doc_id: str, prev: dict[str, Any] | None, expected: Any
) -> ConflictError | None:
    if expected is ANY_REVISION or (expected is ABSENT and prev is None):
        return None
    if expected is None:
        if prev is None or prev["_deleted"]:
            return None
        return ConflictError(
            f"A document with id {doc_id!r} already exists in {collection!r}; use upsert() "
            "to overwrite it or patch() to change it.",
            code="DOCUMENT_EXISTS",
            document=prev,
            collection=collection,
            id=doc_id,
        )
    if prev is not None and expected is not ABSENT and prev["_rev"] == expected:
        return None
    return ConflictError(
        f"Document {doc_id!r} in {collection!r} changed since revision {expected!r} was read; "
        "read it again and retry (modify() does this for you).",
        code="CONFLICT",
        document=prev,
        collection=collection,
        id=doc_id,
        expected=expected,
    )


class SQLiteStorage:
    """Documents of every collection of one database file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.token = ""
        self.on_commit: Callable[[list[ChangeEvent]], None] = lambda events: None
        self._writer: aiosqlite.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._collections: dict[str, _CollectionInfo] = {}
        self._tempdir: str | None = None
        self._own_seqs: list[tuple[int, int]] = []  # ranges this object wrote
        self._own_lock = threading.Lock()
        #: Run in the writer thread at the start of every :meth:`write` transaction; one
        #: raising aborts it (the encryption plugin checks the file's key record there).
        self.write_checks: list[Callable[[sqlite3.Connection], None]] = []

    @classmethod
    async def open(cls, path: str) -> SQLiteStorage:
        """Open (creating if needed) the database file; ``":memory:"`` uses a private temp file."""
        for attempt in range(6):
            storage = cls(path)
            try:
                await storage._open()
                return storage
            except StorageError as exc:
                # two processes creating one new file at once: switching it to WAL can fail
                # with "locked" without waiting on the busy timeout; try again shortly
                if "locked" not in str(exc) or attempt == 5:
                    raise
            await asyncio.sleep(0.02 * 2**attempt)
        raise AssertionError("unreachable")

    async def _open(self) -> None:
        if self.path == ":memory:":
            # A private file, removed on close: readers and the writer need a shared file.
            self._tempdir = tempfile.mkdtemp(prefix="p2pdb-")
            file = os.path.join(self._tempdir, "memory.db")
        else:
            file = self.path
        try:
            self._writer = await aiosqlite.connect(file, isolation_level=None)
            await self._writer.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            await self._writer.execute("PRAGMA journal_mode = WAL")
            await self._writer.execute("PRAGMA synchronous = NORMAL")
            await self._write_raw(self._init_schema)
            self._reader = sqlite3.connect(file, isolation_level=None, check_same_thread=False)
            self._reader.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            self._reader.execute("PRAGMA query_only = 1")
        except (sqlite3.Error, StorageError) as exc:
            await self.close()
            raise StorageError(
                f"Cannot open database {self.path!r}: {exc}. Check the path and permissions, "
                "and that the file is an SQLite database.",
                code="STORAGE_OPEN",
                path=self.path,
            ) from exc

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        conn.executescript(_SCHEMA_SQL)
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT value FROM p2pdb_info WHERE key = 'token'").fetchone()
            if row is None:
                conn.execute("INSERT INTO p2pdb_info VALUES ('token', ?)", (random_token(),))
                row = conn.execute("SELECT value FROM p2pdb_info WHERE key = 'token'").fetchone()
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.token = row[0]

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._writer is None

    async def close(self) -> None:
        """Close both connections (and remove the temp file of a ``":memory:"`` database)."""
        writer, self._writer = self._writer, None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if writer is not None:
            await writer.close()
        if self._tempdir is not None:
            shutil.rmtree(self._tempdir, ignore_errors=True)
            self._tempdir = None

    # -- collections -----------------------------------------------------------------------

    async def ensure_collection(
        self, name: str, schema: Schema, codec: BodyCodec | None = None
    ) -> None:
        """Create the collection's table and indexes, or check the stored schema matches."""
        if not _COLLECTION_NAME.match(name):
            raise ValidationError(
                f"Collection name {name!r} must start with a-z and hold only a-z, 0-9, '_' "
                "or '-' (at most 63 characters).",
                code="COLLECTION_NAME",
                name=name,
            )
        info = _CollectionInfo(name, table_name(name), schema, codec)

        def create(conn: sqlite3.Connection) -> None:
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
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {info.table} (id TEXT PRIMARY KEY, "
                    "seq INTEGER NOT NULL, rev TEXT NOT NULL, lwt REAL NOT NULL, "
                    "deleted INTEGER NOT NULL, origin TEXT, body TEXT NOT NULL)"
                )
                conn.execute(
                    f'CREATE INDEX IF NOT EXISTS "ix_{name}__seq" ON {info.table} (seq)'
                )
                for fields in schema.indexes:
                    # the primary key ends every index, as in RxDB: it is every sort's tiebreaker
                    exprs = ", ".join(
                        [path_expression(f, primary_key=schema.primary_key) for f in fields]
                        + ["id"]
                    )
                    ix = "ix_" + name + "__" + "__".join(fields).replace(".", "_")
                    conn.execute(
                        f'CREATE INDEX IF NOT EXISTS "{ix}" ON {info.table} ({exprs}) '
                        "WHERE deleted = 0"
                    )
                conn.execute(
                    "INSERT OR REPLACE INTO p2pdb_collections VALUES (?, ?, ?, ?)",
                    (name, schema.version, orjson.dumps(schema.raw).decode(), schema.hash),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        await self._write_raw(create)
        self._collections[name] = info

    def _collection(self, name: str) -> _CollectionInfo:
        try:
            return self._collections[name]
        except KeyError:
            raise NotFoundError(
                f"No collection {name!r} in this database; add it with add_collection().",
                code="COLLECTION_NOT_FOUND",
                name=name,
            ) from None

    # -- writing ---------------------------------------------------------------------------

    async def write(self, fn: Callable[[WriteTxn], T]) -> T:
        """Run ``fn(txn)`` in one transaction on the writer thread; events follow the commit."""
        loop = asyncio.get_running_loop()

        def run(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for check in self.write_checks:
                    check(conn)
                txn = WriteTxn(self, conn)
                result = fn(txn)
                txn._finish()
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            if txn.events:
                loop.call_soon_threadsafe(self.on_commit, txn.events)
            return result

        return await self._write_raw(run)

    async def _write_raw(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        writer = self._writer
        if writer is None:
            raise ClosedError(
                f"The database {self.path!r} is closed; open it again to use it.",
                code="DATABASE_CLOSED",
            )
        try:
            # aiosqlite's _execute runs a function on its connection thread: one hop for a
            # whole transaction instead of one per statement.
            result: T = await writer._execute(lambda: fn(writer._conn))  # type: ignore[no-untyped-call]
            return result
        except sqlite3.OperationalError as exc:
            busy = "locked" in str(exc) or "busy" in str(exc)
            raise StorageError(
                f"SQLite failed on {self.path!r}: {exc}."
                + (" Another process held the write lock too long; retry." if busy else ""),
                code="STORAGE_BUSY" if busy else "STORAGE_FAILED",
                path=self.path,
            ) from exc
        except sqlite3.Error as exc:
            raise StorageError(
                f"SQLite failed on {self.path!r}: {exc}.", code="STORAGE_FAILED", path=self.path
            ) from exc

    # -- reading ---------------------------------------------------------------------------

    def _read_conn(self) -> sqlite3.Connection:
        if self._reader is None:
            raise ClosedError(
                f"The database {self.path!r} is closed; open it again to use it.",
                code="DATABASE_CLOSED",
            )
        return self._reader

    def _to_state(
        self, info: _CollectionInfo, row: Sequence[Any], lenient: bool = False
    ) -> dict[str, Any]:
        doc_id, rev, lwt, deleted, body = row
        state: dict[str, Any] = orjson.loads(body)
        if info.codec is not None:
            try:
                state = info.codec.decode(info.name, doc_id, state)
            except EncryptionError:
                if not lenient:
                    raise
                state = {info.schema.primary_key: doc_id}  # what is left of a damaged body
        state["_deleted"] = bool(deleted)
        state["_rev"] = rev
        state["_meta"] = {"lwt": lwt}
        return state

    def _get_many(
        self, conn: sqlite3.Connection, collection: str, ids: list[str], lenient: bool = False
    ) -> dict[str, dict[str, Any]]:
        info = self._collection(collection)
        out: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), _ID_CHUNK):
            chunk = ids[start : start + _ID_CHUNK]
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(
                f"SELECT id, rev, lwt, deleted, body FROM {info.table} WHERE id IN ({marks})",
                chunk,
            ):
                out[row[0]] = self._to_state(info, row, lenient)
        return out

    def get(self, collection: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Stored states (tombstones included) by id; a synchronous, inline point read."""
        return self._get_many(self._read_conn(), collection, list(ids))

    def get_one(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        """One stored state (tombstone included) or ``None``."""
        info = self._collection(collection)
        sql = f"SELECT id, rev, lwt, deleted, body FROM {info.table} WHERE id = ?"
        row = self._read_conn().execute(sql, (doc_id,)).fetchone()
        return None if row is None else self._to_state(info, row)

    async def query(
        self, collection: str, query: CompiledQuery, skip: int = 0, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Live (not deleted) states matching a compiled query, sorted, skipped and limited."""
        info = self._collection(collection)
        sql = (
            f"SELECT id, rev, lwt, deleted, body FROM {info.table} "
            f"WHERE deleted = 0 AND ({query.where_sql}) ORDER BY {query.order_sql}"
        )
        params: tuple[Any, ...] = tuple(query.where_params)
        residual = query.residual
        if residual is None and limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params += (limit, skip)
        elif residual is None and skip:
            sql += " LIMIT -1 OFFSET ?"
            params += (skip,)

        def run(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            states = [self._to_state(info, row) for row in conn.execute(sql, params)]
            if residual is None:
                return states
            matched = [s for s in states if residual(s)]
            return matched[skip : None if limit is None else skip + limit]

        if limit is not None and residual is None:
            return run(self._read_conn())
        return await self._read_in_thread(run)

    async def count(self, collection: str, query: CompiledQuery) -> int:
        """How many live states match."""
        info = self._collection(collection)
        if query.residual is not None:
            return len(await self.query(collection, query))
        sql = f"SELECT count(*) FROM {info.table} WHERE deleted = 0 AND ({query.where_sql})"
        params = tuple(query.where_params)
        return await self._read_in_thread(lambda conn: conn.execute(sql, params).fetchone()[0])

    async def _read_in_thread(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        self._read_conn()  # raises ClosedError when closed
        return await self._write_raw(fn)

    def last_seq(self, collection: str) -> int:
        """The sequence number of the collection's latest write (0 if none)."""
        info = self._collection(collection)
        row = self._read_conn().execute(f"SELECT max(seq) FROM {info.table}").fetchone()
        return int(row[0] or 0)

    def changes_since(
        self, collection: str, seq: int, limit: int
    ) -> tuple[list[tuple[int, dict[str, Any]]], int]:
        """States (tombstones included) written after ``seq``, in sequence order, as
        ``(seq, state)`` pairs, and the sequence of the last one (``seq`` if none)."""
        info = self._collection(collection)
        rows = (
            self._read_conn()
            .execute(
                f"SELECT id, rev, lwt, deleted, body, seq FROM {info.table} "
                "WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            )
            .fetchall()
        )
        out = [(row[5], self._to_state(info, row[:5])) for row in rows]
        return out, (rows[-1][5] if rows else seq)

    # -- noticing other writers (see tailer.py) ---------------------------------------------

    def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version``: changes when another connection commits."""
        value: int = self._read_conn().execute("PRAGMA data_version").fetchone()[0]
        return value

    def current_seq(self) -> int:
        """The last sequence number committed to the file."""
        row = self._read_conn().execute("SELECT value FROM p2pdb_info WHERE key = 'seq'").fetchone()
        return int(row[0]) if row else 0

    def rows_between(
        self, after: int, upto: int
    ) -> list[tuple[str, int, str, dict[str, Any], str]]:
        """``(collection, seq, id, state, origin)`` of rows with ``after < seq <= upto``
        that this object did not write (its own rows are skipped before decoding them)."""
        conn = self._read_conn()
        with self._own_lock:
            own = list(self._own_seqs)
        out = []
        for info in list(self._collections.values()):
            for row in conn.execute(
                f"SELECT id, rev, lwt, deleted, body, seq, origin FROM {info.table} "
                "WHERE seq > ? AND seq <= ? ORDER BY seq",
                (after, upto),
            ):
                if any(first <= row[5] <= last for first, last in own):
                    continue
                out.append((info.name, row[5], row[0], self._to_state(info, row[:5]), row[6]))
        return out

    def _note_own_seqs(self, first: int, last: int) -> None:
        with self._own_lock:  # called from the writer thread, before COMMIT
            self._own_seqs.append((first, last))

    def own_seq_ranges(self) -> list[tuple[int, int]]:
        """The sequence ranges this object's writer wrote (not yet forgotten), sorted."""
        with self._own_lock:
            return sorted(self._own_seqs)

    def forget_own_seqs(self, upto: int) -> None:
        """Drop the record of own writes up to ``upto`` (the tailer has passed them)."""
        with self._own_lock:
            self._own_seqs = [r for r in self._own_seqs if r[1] > upto]

    def _meta_codec(self, replication_id: str) -> Callable[[str, Any, bool], Any] | None:
        """For the replication state of a collection with a codec (its id starts with
        ``"<collection>:"``): a function encoding (or decoding) its ``doc:<id>`` items."""
        name, colon, _ = replication_id.partition(":")
        info = self._collections.get(name) if colon else None
        if info is None or info.codec is None:
            return None
        codec = info.codec

        def apply(item: str, value: Any, encode: bool) -> Any:
            if not item.startswith("doc:") or not isinstance(value, dict):
                return value
            fn = codec.encode if encode else codec.decode
            return fn(name, item[4:], value)

        return apply

    def _get_meta(
        self, conn: sqlite3.Connection, replication_id: str, items: list[str]
    ) -> dict[str, Any]:
        codec = self._meta_codec(replication_id)
        out: dict[str, Any] = {}
        for start in range(0, len(items), _ID_CHUNK):
            chunk = items[start : start + _ID_CHUNK]
            marks = ",".join("?" * len(chunk))
            for item, value in conn.execute(
                "SELECT item, value FROM p2pdb_replication "
                f"WHERE replication_id = ? AND item IN ({marks})",
                (replication_id, *chunk),
            ):
                out[item] = orjson.loads(value)
                if codec is not None:
                    out[item] = codec(item, out[item], False)
        return out

    def get_meta(self, replication_id: str, items: Sequence[str]) -> dict[str, Any]:
        """Replication state values stored under ``replication_id`` (inline read)."""
        return self._get_meta(self._read_conn(), replication_id, list(items))

    def get_info(self, key: str) -> str | None:
        """A value of the ``p2pdb_info`` table (plugins keep their records there)."""
        sql = "SELECT value FROM p2pdb_info WHERE key = ?"
        row = self._read_conn().execute(sql, (key,)).fetchone()
        return None if row is None else str(row[0])

    def stored_schemas(self) -> dict[str, dict[str, Any]]:
        """The schema of every collection stored in the file (added now or before)."""
        rows = self._read_conn().execute("SELECT name, schema FROM p2pdb_collections")
        return {name: orjson.loads(schema) for name, schema in rows}

