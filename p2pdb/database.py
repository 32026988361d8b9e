"""Database: one SQLite file holding named collections."""

from __future__ import annotations

import itertools
import logging
import os
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping
from typing import Any

from reactivex import Observable

from .backup import ExportOptions, ImportOptions, ImportReport, export_json, import_json
from .changes import ChangeEvent
from .cleanup import BackgroundCleanup, CleanupPolicy
from .collection import Collection
from .encryption_seam import (
    ENCRYPTION_ENTRY_POINT_GROUP,
    Encryption,
    EncryptionProvider,
    encryption_opener,
    encryption_provider,
)
from .errors import ClosedError, EncryptionError, NotFoundError, SchemaError
from .identity import DeviceIdentity, load_identity, replace_identity
from .local import LocalDocumentMethods, LocalDocuments
from .migration import MigrationStrategy, migrate_collection
from .schema import Schema
from .storage import SQLiteStorage
from .streams import CommitStreams, EventStream, iterate
from .tailer import ForeignWriteTailer

log = logging.getLogger("p2pdb.database")

__all__ = [
    "ENCRYPTION_ENTRY_POINT_GROUP",
    "Database",
    "Encryption",
    "EncryptionProvider",
    "create_database",
    "encryption_provider",
]

class Database(LocalDocumentMethods):
    """An open database. Create one with :func:`create_database` (which starts it).

    Built directly on an open storage, it is inert until :meth:`start` (or ``async with``)
    starts the tailer, and :meth:`close` stops everything (see "Lifecycle" in
    ``docs/architecture.md``).
    """

    def __init__(self, storage: SQLiteStorage, encryption: Encryption | None = None) -> None:
        self.storage = storage
        self.encryption = encryption
        self._collections: dict[str, Collection] = {}
        self.collections: Mapping[str, Collection] = types.MappingProxyType(self._collections)
        self._events: EventStream[ChangeEvent] = EventStream()
        self._streams: dict[str, CommitStreams] = {}  # per collection, fed by _on_commit
        storage.on_commit = self._on_own_commit
        self._tailer = ForeignWriteTailer(storage, self._on_commit)
        self._closers: dict[int, Callable[[], Awaitable[None]]] = {}
        self._closer_ids = itertools.count()
        self._local: dict[str | None, LocalDocuments] = {}  # by collection (None: the db's)
        self._collection_closers: dict[str, dict[int, Callable[[], Awaitable[None]]]] = {}

    async def start(self) -> Database:
        """Start noticing other processes' writes (the tailer); returns the database.
        Calling it again does nothing."""
        self.check_open()
        if self._identity is None:
            try:
                self._identity = await load_identity(self.storage, self.encryption)
            except EncryptionError as exc:  # IDENTITY_LOCKED: raised when it is asked for
                self._identity = exc
        await self._tailer.start()
        return self

    @property
    def path(self) -> str:
        """The file this database lives in (``":memory:"`` for a temporary one)."""
        return self.storage.path

    @property
    def token(self) -> str:
        """A random token created with the database file and kept for its whole life.

        Peers use it to tell databases apart and to elect which side of a pair leads.
        """
        return self.storage.token

    # loaded by start(); the error instead when the key is sealed and no password was given
    _identity: DeviceIdentity | EncryptionError | None = None

    @property
    def identity(self) -> DeviceIdentity:
        """This database's device identity (``public_key``, ``public_key_text``,
        ``fingerprint``): an Ed25519 key pair created with the file and kept in it (sealed
        under the password when there is one). ``IDENTITY_LOCKED`` when the key is sealed
        and the database was opened without its password."""
        self.check_open()
        identity = self._identity
        if isinstance(identity, EncryptionError):
            raise identity
        if identity is None:
            raise ClosedError("The database was not started.", code="DATABASE_CLOSED")
        return identity

    async def rotate_identity(self) -> DeviceIdentity:
        """Replace the device key pair with a new one and return it (the old key is gone).
        Pools started before keep proving the old key until started again; peers that
        list the old key in ``trusted_peers`` must be given the new one (and revoke the
        old). Replication ids name the key, so each peer pulls from this one again, once."""
        self.check_open()
        self._identity = await replace_identity(self.storage, self.encryption)
        return self._identity

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self.storage.closed

    def check_open(self) -> None:
        """Raise :class:`~p2pdb.errors.ClosedError` if the database was closed."""
        if self.storage.closed:
            raise ClosedError(
                f"The database {self.path!r} is closed; open it again with create_database().",
                code="DATABASE_CLOSED",
            )

    async def add_collection(
        self,
        name: str,
        schema: Mapping[str, Any],
        conflict_handler: object = None,
        *,
        migration_strategies: Mapping[int, MigrationStrategy] | None = None,
    ) -> Collection:
        """Open the collection ``name`` (creating its table on first use).

        ``conflict_handler`` decides conflicts in replication: an object with ``is_equal``
        and ``resolve``, or a plain ``resolve`` function (default:
        :data:`p2pdb.conflicts.master_wins`). ``migration_strategies`` (version -> function)
        migrate documents stored at a lower schema version (``docs/migration.md``).
        """
        self.check_open()
        if name in self._collections:
            raise SchemaError(
                f"Collection {name!r} was already added to this database; use "
                f"db.collections[{name!r}].",
                code="COLLECTION_EXISTS",
                name=name,
            )
        checked = Schema(schema)
        codec = None
        if checked.encrypted:
            if self.encryption is None:
                raise EncryptionError(
                    f"Collection {name!r} has encrypted fields {list(checked.encrypted)}, but "
                    "the database was opened without a password. Open it with "
                    "create_database(path, password=...).",
                    code="ENCRYPTION_NO_PASSWORD",
                    collection=name,
                )
            codec = self.encryption.codec_for(name, checked)
        await migrate_collection(self, name, checked, migration_strategies, codec)
        await self.storage.ensure_collection(name, checked, codec)
        streams = CommitStreams()
        collection = Collection(self, name, checked, conflict_handler, streams)
        self._streams[name] = streams
        self._collections[name] = collection
        return collection

    async def change_password(self, old: str, new: str) -> None:
        """Re-encrypt every encrypted value under a key derived from ``new`` (with a new
        salt), in one transaction: after a crash either the old or the new password opens the
        database, with every value intact. A wrong ``old`` raises
        :class:`~p2pdb.errors.EncryptionError` (``ENCRYPTION_WRONG_PASSWORD``) and changes
        nothing. Other processes that have the file open must open it again afterwards."""
        self.check_open()
        if self.encryption is None:
            raise EncryptionError(
                "This database was opened without a password, so there is none to change. "
                "A password is set when a new database is created: "
                "create_database(path, password=...).",
                code="ENCRYPTION_NOT_ENABLED",
            )
        await self.encryption.change_password(old, new)

    @property
    def changes(self) -> Observable[ChangeEvent]:
        """Every committed write to any collection of this database, in commit order."""
        return self._events

    def watch(self, *, max_buffer: int = 10_000) -> AsyncIterator[ChangeEvent]:
        """``async for event in db.watch()``: the events of :attr:`changes`."""
        return iterate(self._events, max_buffer=max_buffer)

    def _on_own_commit(self, events: list[ChangeEvent]) -> None:
        self._tailer.note_own(events[0].seq, events[-1].seq)
        self._on_commit(events)

    @property
    def safe_seq(self) -> int:
        """The sequence number up to which every write was emitted (see tailer.py)."""
        return self._tailer.safe_seq

    def _on_commit(self, events: list[ChangeEvent]) -> None:
        """Called on the loop, in commit order, once per committed transaction."""
        if not events:
            return
        first = events[0].collection
        if all(event.collection == first for event in events):
            by_collection = {first: list(events)}  # the usual case: one collection's writes
        else:
            by_collection = {}
            for event in events:
                by_collection.setdefault(event.collection, []).append(event)
        for name, batch in by_collection.items():
            streams = self._streams.get(name)
            if streams is not None:
                streams.emit(batch)
        if self._events.observers:  # nobody listens to db.changes: nothing to hand out
            for event in events:
                self._events.on_next(event)

    def close_with(self, closer: Callable[[], Awaitable[None]]) -> Callable[[], None]:
        """Have :meth:`close` await ``closer()`` first, before the file closes: how a
        long-lived user of the database (a replication, a WebRTC pool, a server) stops
        with it. Returns a function that unregisters ``closer`` (call it when the user
        stops on its own). Raises ``DATABASE_CLOSED`` on a closed database."""
        self.check_open()
        key = next(self._closer_ids)
        self._closers[key] = closer

        def unregister() -> None:
            self._closers.pop(key, None)

        return unregister

    async def close(self) -> None:
        """Close the database: first what was registered with :meth:`close_with`
        (replications and pools stop), then streams complete, ``async for`` loops end, and
        further use raises :class:`~p2pdb.errors.ClosedError`."""
        if self.storage.closed:
            return
        while self._closers:  # newest first; a closer may unregister others
            key = max(self._closers)
            closer = self._closers.pop(key)
            try:
                await closer()
            except Exception:  # one failing user must not keep the file open
                log.exception("closing %r with the database failed", closer)
        await self._tailer.close()
        await self.storage.close()
        for streams in self._streams.values():
            streams.complete()
        self._events.on_completed()
        for local in self._local.values():
            local.complete()

    async def start_cleanup(self, policy: CleanupPolicy | None = None) -> BackgroundCleanup:
        """Start the background tombstone cleanup (``docs/cleanup.md``); it stops with
        :meth:`close`. Off unless started: purging is never implicit."""
        return await BackgroundCleanup(self, policy).start()

    async def __aenter__(self) -> Database:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- local documents (local.py), removing collections, backups (backup.py) -------------

    def local_documents(self, collection: str | None = None) -> LocalDocuments:
        """The local documents (``docs/local-documents.md``) of the database
        (``collection=None``) or of one collection, added or stored in the file."""
        self.check_open()
        if collection not in self._local:
            if collection is not None and not self._has_collection(collection):
                raise self._no_collection(collection)
            self._local[collection] = LocalDocuments(self.storage, collection, self.check_open)
        return self._local[collection]

    def local_store(self) -> LocalDocuments:
        """The database's own local documents (what ``insert_local`` & co. act on)."""
        return self.local_documents()

    def close_with_collection(
        self, name: str, closer: Callable[[], Awaitable[None]]
    ) -> Callable[[], None]:
        """:meth:`close_with`, and also awaited first by ``remove_collection(name)``: how a
        replication of the collection stops when the collection goes. Returns the function
        that unregisters ``closer`` from both."""
        unregister_close = self.close_with(closer)
        key = next(self._closer_ids)
        closers = self._collection_closers.setdefault(name, {})
        closers[key] = closer

        def unregister() -> None:
            unregister_close()
            closers.pop(key, None)

        return unregister

    def _has_collection(self, name: str) -> bool:
        return name in self._collections or name in self.storage.stored_schemas()

    def _no_collection(self, name: str) -> NotFoundError:
        return NotFoundError(
            f"No collection {name!r} in the database {self.path!r}.",
            code="COLLECTION_NOT_FOUND",
            name=name,
        )

    async def remove_collection(self, name: str) -> None:
        """Remove the collection ``name`` (added or only stored in the file) for good: first
        its replications registered with :meth:`close_with_collection` stop, then its table,
        indexes, catalog row, replication state and local documents are dropped in one
        transaction. Its streams complete; the old Collection raises ``COLLECTION_REMOVED``.
        It can be added again, empty, with :meth:`add_collection`."""
        self.check_open()
        if not self._has_collection(name):
            raise self._no_collection(name)
        for closer in list(self._collection_closers.pop(name, {}).values()):
            await closer()  # a replication must not write into the collection as it goes
        await self.storage.remove_collection(name)
        self._collections.pop(name, None)
        streams = self._streams.pop(name, None)
        if streams is not None:
            streams.complete()
        local = self._local.pop(name, None)
        if local is not None:
            local.complete(removed=True)

    async def export_json(self, options: ExportOptions | None = None) -> dict[str, Any]:
        """The added collections' schemas and documents as one JSON-ready dict, encrypted
        fields decrypted; ``options`` picks collections, tombstones, replication state."""
        return await export_json(self, options or ExportOptions())

    async def import_json(
        self, data: Mapping[str, Any], options: ImportOptions | None = None
    ) -> ImportReport:
        """Write an :meth:`export_json` dump: all validated first, then one transaction per
        collection (``docs/backup.md``)."""
        return await import_json(self, data, options or ImportOptions())


class _DatabaseOpener:
    """Makes ``create_database`` usable with both ``await`` and ``async with``."""

    def __init__(self, path: str, password: str | None) -> None:
        self._path = path
        self._password = password
        self._db: Database | None = None

    async def _open(self) -> Database:
        open_encryption = encryption_opener(self._password)
        storage = await SQLiteStorage.open(self._path)
        try:
            encryption = await open_encryption(storage)
        except BaseException:
            await storage.close()
            raise
        self._db = await Database(storage, encryption).start()
        return self._db

    def __await__(self) -> Generator[Any, None, Database]:
        return self._open().__await__()

    async def __aenter__(self) -> Database:
        return await self._open()

    async def __aexit__(self, *exc: object) -> None:
        if self._db is not None:
            await self._db.close()


def create_database(
    path: str | os.PathLike[str], *, password: str | None = None
) -> _DatabaseOpener:
    """Open the database stored in the SQLite file ``path`` (a ``str`` or a
    :class:`pathlib.Path`), creating it if needed; ``db.path`` is then that path as a ``str``.

    ``":memory:"`` gives a database that disappears when closed. Use as
    ``db = await create_database(path)`` or ``async with create_database(path) as db:``.

    With ``password``, the fields a schema lists as ``encrypted`` are stored encrypted
    (AES-256-GCM, key derived with scrypt; see ``docs/encryption.md``). A wrong password
    raises :class:`~p2pdb.errors.EncryptionError` (``ENCRYPTION_WRONG_PASSWORD``). A
    password can only be given to a database created with one.
    """
    return _DatabaseOpener(os.fspath(path), password)
