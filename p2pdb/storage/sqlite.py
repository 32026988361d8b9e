"""SQLite storage: documents, their revisions, the change sequence and replication state.

Each call of :meth:`SQLiteStorage.write` runs a whole function in the writer thread inside
one ``BEGIN IMMEDIATE`` transaction, so a bulk write costs one thread hop, not one per row
(a small one runs on the event loop when the thread is idle). Point reads and bounded
queries run inline on the event loop; unbounded queries (no ``limit``) and counts go to the
writer thread so a long scan never blocks the loop (see connection.py).

Change events are handed to ``on_commit`` on the event loop right after ``COMMIT``, so they
are emitted in commit order, before the writing task resumes.
"""

from __future__ import annotations

import os
import sqlite3
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..changes import ChangeEvent
from ..query import CompiledQuery
from ..schema import Schema
from . import catalog, documents, local_rows, own_writes, queries
from . import migration_rows as migration_sql
from . import replication_rows as replication_state
from .base import BodyCodec, DamagedDocument, Direction, Skip, Storage, WriteCheck, WriteTxn
from .catalog import Catalog
from .connection import Connections, retry_locked, transaction
from .own_writes import OwnWrites
from .purge import PurgeBatch, purge_batch
from .replication_rows import ReplicationRows
from .txn import SQLiteWriteTxn

__all__ = ["SQLiteStorage"]

T = TypeVar("T")

#: Every storage opened in this process and not closed yet (``remove_database`` asks).
_OPEN: weakref.WeakSet[SQLiteStorage] = weakref.WeakSet()


class SQLiteStorage:
    """Documents of every collection of one database file (implements
    :class:`~p2pdb.storage.Storage`). Open with ``await SQLiteStorage.open(path)``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.token = ""
        self.on_commit: Callable[[list[ChangeEvent]], None] = lambda events: None
        #: Run in the writer thread at the start of every :meth:`write` transaction, with
        #: its :class:`WriteTxn`; one raising aborts it (the encryption plugin checks the
        #: file's key record there).
        self.write_checks: list[WriteCheck] = []
        self._conns = Connections(path)
        self._catalog = Catalog()
        self._replication = ReplicationRows(self._catalog)
        self._own = OwnWrites()
        self._damage = documents.DamageLog()

    @classmethod
    async def open(cls, path: str) -> SQLiteStorage:
        """Open (creating if needed) the database file; ``":memory:"`` uses a private temp file."""

        async def attempt() -> SQLiteStorage:
            storage = cls(path)
            storage.token = await storage._conns.open(catalog.init_file)
            _OPEN.add(storage)
            return storage

        return await retry_locked(attempt)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._conns.closed

    async def close(self) -> None:
        """Close both connections (and remove the temp file of a ``":memory:"`` database)."""
        _OPEN.discard(self)
        await self._conns.close()

    async def __aenter__(self) -> SQLiteStorage:
        """``async with await SQLiteStorage.open(path) as storage:``."""
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close on leaving the ``async with`` block."""
        await self.close()

    # -- collections -----------------------------------------------------------------------

    async def ensure_collection(
        self, name: str, schema: Schema, codec: BodyCodec | None = None
    ) -> None:
        """Create the collection's table and indexes, or check the stored schema matches."""
        info = self._catalog.prepare(name, schema, codec)
        await self._conns.run(lambda conn: Catalog.create(conn, info))
        self._catalog.add(info)

    def stored_schemas(self) -> dict[str, dict[str, Any]]:
        """The schema of every collection stored in the file (added now or before)."""
        return catalog.stored_schemas(self._conns.reader())

    def get_info(self, key: str) -> str | None:
        """A value of the file's info records (plugins keep their records there)."""
        return catalog.get_info(self._conns.reader(), key)

    # -- writing ---------------------------------------------------------------------------

    async def write(self, fn: Callable[[WriteTxn], T], *, small: bool = False) -> T:
        """Run ``fn(txn)`` in one transaction on the writer thread (``small``: on the event
        loop when the thread is idle, see connection.py); events follow the commit."""
        cat, replication, own = self._catalog, self._replication, self._own
        checks = self.write_checks

        def body(conn: sqlite3.Connection) -> tuple[T, list[ChangeEvent]]:
            txn = SQLiteWriteTxn(conn, cat, replication, own)
            for check in checks:
                check(txn)
            result = fn(txn)
            txn.finish()
            return result, txn.events

        def committed(done: tuple[T, list[ChangeEvent]]) -> None:
            if done[1]:
                self.on_commit(done[1])

        result, _ = await self._conns.transaction(body, committed, small=small)
        return result

    # -- reading ---------------------------------------------------------------------------

    def get(self, collection: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Stored states (tombstones included) by id; a synchronous, inline point read."""
        info = self._catalog.get(collection)
        return self._conns.read(
            lambda conn: documents.get_many(conn, info, list(ids), damage=self._damage)
        )

    def get_one(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        """One stored state (tombstone included) or ``None``; a damaged one raises
        ``ENCRYPTION_TAMPERED``."""
        info = self._catalog.get(collection)
        sql = f"SELECT {documents.COLUMNS} FROM {info.table} WHERE id = ?"
        row = self._conns.read(lambda conn: conn.execute(sql, (doc_id,)).fetchone())
        if row is None:
            return None
        state = documents.decode_row(info, row, self._damage)
        return state if state is not None else documents.to_state(info, row)  # raises

    def origin(self, collection: str, doc_id: str) -> str | None:
        """Who wrote a document's stored state (its write's ``origin``), ``None`` if none."""
        return documents.origin_of(self._conns.reader(), self._catalog.get(collection), doc_id)

    async def query(
        self, collection: str, query: CompiledQuery, skip: int = 0, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Live (not deleted) states matching a compiled query, sorted, skipped and limited."""
        info = self._catalog.get(collection)
        run, bounded = queries.plan_query(info, query, skip, limit, self._damage)
        if bounded:
            return self._conns.read(run)
        return await self._conns.read_in_thread(run)

    async def count(self, collection: str, query: CompiledQuery) -> int:
        """How many live states match."""
        info = self._catalog.get(collection)
        if query.residual is not None:
            return len(await self.query(collection, query))
        return await self._conns.read_in_thread(lambda conn: queries.count(conn, info, query))

    def last_seq(self, collection: str) -> int:
        """The sequence number of the collection's latest write (0 if none)."""
        return self._conns.read(lambda conn: queries.last_seq(conn, self._catalog.get(collection)))

    def changes_since(
        self, collection: str, seq: int, limit: int, skip: Skip | None = None
    ) -> tuple[list[tuple[int, dict[str, Any]]], int]:
        """States (tombstones included) written after ``seq``, in sequence order, as
        ``(seq, state)`` pairs, and the sequence of the last one (``seq`` if none); rows
        for which ``skip(id, rev)`` is true are passed over unread."""
        info = self._catalog.get(collection)
        return self._conns.read(
            lambda conn: queries.changes_since(conn, info, seq, limit, self._damage, skip)
        )

    def get_or_damaged(
        self, collection: str, ids: Sequence[str]
    ) -> dict[str, dict[str, Any] | DamagedDocument]:
        """Like :meth:`get`, but a damaged document comes back as its
        :class:`~p2pdb.storage.base.DamagedDocument` instead of raising; inline."""
        info = self._catalog.get(collection)
        return self._conns.read(
            lambda conn: documents.get_or_damaged(conn, info, list(ids), self._damage)
        )

    async def damaged(self, collection: str) -> list[DamagedDocument]:
        """Every stored document (tombstones too) whose body fails authentication, by id;
        a scan of the whole collection, on the writer thread."""
        info = self._catalog.get(collection)
        return await self._conns.read_in_thread(
            lambda conn: documents.scan_damaged(conn, info, self._damage)
        )

    # -- replication state (format: replication_rows.py) ----------------------------------

    def get_checkpoint(self, collection: str, replication_id: str, direction: Direction) -> Any:
        """A replication's stored checkpoint (``None`` if none); an inline read."""
        rows = self._replication
        return self._conns.read(
            lambda conn: rows.get_checkpoint(conn, collection, replication_id, direction)
        )

    def get_assumed(
        self, collection: str, replication_id: str, ids: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        """A replication's assumed master states by document id, decoded through the
        collection's codec; an inline read."""
        rows = self._replication
        return self._conns.read(
            lambda conn: rows.get_assumed(conn, collection, replication_id, ids)
        )

    def get_last_contact(self, collection: str, replication_id: str) -> float | None:
        """When the replication last stored a checkpoint (Unix time), if ever; inline."""
        return self._replication.get_last_contact(self._conns.reader(), collection, replication_id)

    def list_replications(self) -> list[tuple[str, str]]:
        """``(collection, replication_id)`` of every replication with stored checkpoints or
        assumed states, sorted; an inline read."""
        return self._replication.list_replications(self._conns.reader())

    # -- noticing other writers (see tailer.py) ---------------------------------------------

    def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version``: changes when another connection commits."""
        return own_writes.data_version(self._conns.reader())

    def current_seq(self) -> int:
        """The last sequence number committed to the file."""
        return own_writes.current_seq(self._conns.reader())

    def rows_between(
        self, after: int, upto: int
    ) -> list[tuple[str, int, str, dict[str, Any], str]]:
        """``(collection, seq, id, state, origin)`` of rows with ``after < seq <= upto``
        that this object did not write (its own rows are skipped before decoding them)."""
        conn = self._conns.reader()
        own = self._own.ranges()
        return own_writes.rows_between(conn, self._catalog.opened(), own, after, upto)

    def own_seq_ranges(self) -> list[tuple[int, int]]:
        """The sequence ranges this object's writer wrote (not yet forgotten), sorted."""
        return self._own.ranges()

    def forget_own_seqs(self, upto: int) -> None:
        """Drop the record of own writes up to ``upto`` (the tailer has passed them)."""
        self._own.forget(upto)

    # -- removing collections, open files --------------------------------------------------

    async def remove_collection(self, name: str) -> bool:
        """Drop the collection's table and indexes, its catalog row, its replications' state
        and its local documents, in one transaction (no change events); False if the file
        has no such collection. Using it afterwards raises ``COLLECTION_REMOVED``."""
        rows = self._replication

        def drop(conn: sqlite3.Connection) -> bool:
            rows.forget_collection(conn, name)
            local_rows.delete_parent(conn, name)
            return catalog.drop(conn, name)

        found = await self._conns.run(lambda conn: transaction(conn, drop))
        self._catalog.remove(name)
        return found

    @staticmethod
    def open_paths() -> set[str]:
        """The real paths of the files storages of this process hold open."""
        return {os.path.realpath(s.path) for s in list(_OPEN) if not s.closed}

    def replication_state(self, collection: str, replication_id: str) -> dict[str, Any]:
        """One replication's stored state, decoded: ``{"up", "down", "contact", "assumed"}``
        (see ``replication_rows.py``); an inline read."""
        return self._replication.dump(self._conns.reader(), collection, replication_id)

    # -- local documents (format: local_rows.py) --------------------------------------------

    def get_local(self, parent: str, doc_id: str) -> dict[str, Any] | None:
        """``{"id", "data", "_rev"}`` of a local document of ``parent`` (``""``: the
        database's own, else a collection name), or ``None``; an inline read."""
        return self._conns.read(lambda conn: local_rows.get(conn, parent, doc_id))

    def list_local(self, parent: str) -> list[dict[str, Any]]:
        """Every local document of ``parent``, by id; an inline read."""
        return local_rows.list_rows(self._conns.reader(), parent)

    async def put_local(
        self,
        parent: str,
        doc_id: str,
        data: dict[str, Any],
        *,
        insert: bool,
        expected: str | None = None,
    ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """Write a local document in its own transaction: ``(previous, new)``; with
        ``insert``, an existing one raises ``LOCAL_DOCUMENT_EXISTS``; with ``expected``, a
        stored revision other than it raises ``LOCAL_DOCUMENT_CONFLICT``."""

        def put(conn: sqlite3.Connection) -> tuple[dict[str, Any] | None, dict[str, Any]]:
            return local_rows.put(conn, parent, doc_id, data, insert=insert, expected=expected)

        return await self._conns.run(lambda conn: transaction(conn, put))

    async def delete_local(self, parent: str, doc_id: str) -> dict[str, Any] | None:
        """Delete a local document in its own transaction; what it was, or ``None``."""

        def delete(conn: sqlite3.Connection) -> dict[str, Any] | None:
            return local_rows.delete(conn, parent, doc_id)

        return await self._conns.run(lambda conn: transaction(conn, delete))

    # -- schema migration (format: migration_sql.py; the logic: p2pdb/migration.py) -------

    def stored_version(self, name: str) -> tuple[int, dict[str, Any]] | None:
        """The stored ``(version, schema)`` of a collection, or ``None``; an inline read."""
        return catalog.stored_version(self._conns.reader(), name)

    def migration_record(self, name: str) -> dict[str, Any] | None:
        """The progress record of a migration of ``name`` under way, or ``None``; inline."""
        return migration_sql.get_record(self._conns.reader(), name)

    async def count_rows(self, name: str) -> int:
        """How many rows (tombstones included) a stored collection holds."""
        return await self._conns.read_in_thread(lambda c: migration_sql.count_rows(c, name))

    def migration_source(
        self, name: str, after: str | None, limit: int
    ) -> list[migration_sql.MigratedRow]:
        """Rows of a stored (not opened) collection after the id ``after``, in id order,
        bodies as stored; an inline read."""
        return migration_sql.source_batch(self._conns.reader(), name, after, limit)

    async def migration_begin(self, name: str, record: dict[str, Any]) -> dict[str, Any]:
        """Start or restart a migration: an empty scratch table and its progress record
        (returned, with the source's mark as ``"source"``)."""
        return await self._conns.run(lambda conn: migration_sql.begin(conn, name, record))

    async def migration_write(
        self, name: str, rows: list[migration_sql.MigratedRow], record: dict[str, Any]
    ) -> None:
        """Store a batch of migrated rows with the new progress record, in one transaction
        (after the :attr:`write_checks`, which may abort it)."""
        check = self.run_write_checks
        await self._conns.run(
            lambda conn: migration_sql.write_batch(conn, name, rows, record, check)
        )

    def run_write_checks(self, conn: sqlite3.Connection) -> None:
        """In the writer thread, inside a transaction: run the :attr:`write_checks` (the
        encryption plugin's key check) as :meth:`write` does."""
        if self.write_checks:
            txn = SQLiteWriteTxn(conn, self._catalog, self._replication, self._own)
            for check in self.write_checks:
                check(txn)

    async def migration_abort(self, name: str) -> None:
        """Drop a migration's scratch table and progress record."""
        await self._conns.run(lambda conn: migration_sql.abort(conn, name))

    async def migration_finish(
        self,
        name: str,
        schema: Schema,
        source: list[int],
        replications: dict[str, dict[str, Any]],
    ) -> bool:
        """Swap the migrated table in, with ``schema`` and its indexes, in one transaction.
        ``replications`` (by replication id: ``{"up", "down", "assumed"}``, assumed states
        already encoded) replaces the stored state of the collection's replications. False,
        changing nothing, if the source table changed since the migration began."""
        info = catalog.CollectionInfo(name, schema)
        rows = self._replication

        def restore(conn: sqlite3.Connection) -> None:
            self.run_write_checks(conn)
            for replication_id, state in replications.items():
                rows.forget(conn, name, replication_id)
                directions: tuple[Direction, ...] = ("up", "down")
                for direction in directions:
                    if state.get(direction) is not None:
                        rows.set_checkpoint(conn, name, replication_id, direction, state[direction])
                rows.set_assumed(conn, name, replication_id, state["assumed"])

        return await self._conns.run(lambda conn: migration_sql.finish(conn, info, source, restore))

    # -- tombstone cleanup (purge.py; policy: p2pdb/cleanup.py) -------------------------

    def up_checkpoints(self, collection: str) -> dict[str, int | None]:
        """Each stored replication of ``collection``: its up-checkpoint (``None``: never
        stored one); an inline read (see ``replication_rows.up_checkpoints``)."""
        return replication_state.up_checkpoints(self._conns.reader(), collection)

    async def purge_tombstones(
        self,
        collection: str,
        *,
        after_seq: int,
        upto_seq: int,
        older_than_lwt: float,
        scan: int,
        limit: int,
        replications: Sequence[str] = (),
    ) -> PurgeBatch:
        """Delete for good, in one short transaction on the writer thread, the tombstones
        with ``after_seq < seq <= upto_seq`` and ``lwt < older_than_lwt``, looking at
        ``scan`` rows and deleting ``limit`` at most; no change events. Call it again from
        ``scanned_to``. A tombstone whose assumed master state in one of ``replications``
        is live stays."""
        info = self._catalog.get(collection)
        table = info.table

        def keep(conn: sqlite3.Connection, ids: list[str]) -> set[str]:
            kept = replication_state.live_assumed(conn, collection, replications, ids)
            # assumed states stored as markers of rows about to go become full copies (a
            # purged id written again is then pushed against the deletion the master holds)
            self._replication.preserve_assumed(conn, info, [i for i in ids if i not in kept])
            return kept

        def run(conn: sqlite3.Connection) -> PurgeBatch:
            return purge_batch(
                conn,
                table,
                after_seq=after_seq,
                upto_seq=upto_seq,
                older_than_lwt=older_than_lwt,
                scan=scan,
                limit=limit,
                keep=lambda ids: keep(conn, ids),
            )

        return await self._conns.run(lambda conn: transaction(conn, run))


if TYPE_CHECKING:  # the type checker proves the implementation matches the protocols

    def _conforms(storage: SQLiteStorage, txn: SQLiteWriteTxn) -> tuple[Storage, WriteTxn]:
        return storage, txn
