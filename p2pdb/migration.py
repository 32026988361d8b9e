"""Schema migration: ``add_collection(name, schema=v3, migration_strategies={...})``.

When the file stores the collection at a lower schema version than the one given, every
stored row (tombstones included, as RxDB) runs through the strategies ``stored+1 .. new``
in order (a strategy may be sync or async; returning ``None`` drops the document), is
validated against the new schema and re-encoded with the new schema's codec, into a scratch
table, batch by batch (see ``storage/migration_rows.py``). The collection then opens at the
new version. It is resumable: a run killed at any point continues from its last committed
batch when the collection is added again with the same schema. The rules, and what
replication peers see, are in ``docs/migration.md``.
"""

from __future__ import annotations

import inspect
import logging
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from reactivex import Observable

from .errors import EncryptionError, P2PDBError, SchemaError
from .schema import Schema
from .storage import BodyCodec, SQLiteStorage
from .streams import EventStream
from .values import check_json_values

log = logging.getLogger("p2pdb.migration")

__all__ = [
    "BATCH_SIZE",
    "MigrationHost",
    "MigrationProgress",
    "MigrationStrategy",
    "migrate_collection",
    "migration_progress",
]

#: A migration strategy: the document at the previous version (user fields only, a fresh
#: copy it may change) to the document at its version, or ``None`` to drop it; sync or async.
MigrationStrategy = Callable[
    [dict[str, Any]], dict[str, Any] | None | Awaitable[dict[str, Any] | None]
]

#: Rows migrated per transaction.
BATCH_SIZE = 1000

_ABORTING = ("MIGRATION_STRATEGY_FAILED", "MIGRATION_DOCUMENT_INVALID")


@dataclass(frozen=True, slots=True)
class MigrationProgress:
    """Where a migration stands: ``done`` of ``total`` stored rows (tombstones included)
    migrated from ``from_version`` to ``version`` of ``collection``."""

    collection: str
    done: int
    total: int
    version: int
    from_version: int


class CodecSource(Protocol):
    """What makes the codec of an encrypted schema (the database's encryption)."""

    def codec_for(self, collection: str, schema: Schema) -> BodyCodec:
        """The codec of a collection whose schema lists ``encrypted`` fields."""
        ...


class MigrationHost(Protocol):
    """What a migration needs of the database (``Database`` provides it)."""

    @property
    def storage(self) -> SQLiteStorage:
        """The open storage."""
        ...

    @property
    def encryption(self) -> CodecSource | None:
        """The encryption, if the database was opened with a password."""
        ...


_STREAMS: weakref.WeakKeyDictionary[object, EventStream[MigrationProgress]] = (
    weakref.WeakKeyDictionary()
)


def migration_progress(db: object) -> Observable[MigrationProgress]:
    """The :class:`MigrationProgress` of every migration ``db`` runs: one when it starts (or
    resumes), one per committed batch, and one when it is done (``done == total``)."""
    stream = _STREAMS.get(db)
    if stream is None:
        stream = _STREAMS[db] = EventStream()
    return stream


def _emit(db: object, progress: MigrationProgress) -> None:
    stream = _STREAMS.get(db)
    if stream is not None:
        stream.on_next(progress)


async def migrate_collection(
    db: MigrationHost,
    name: str,
    schema: Schema,
    strategies: Mapping[int, MigrationStrategy] | None,
    codec: BodyCodec | None,
    batch_size: int = BATCH_SIZE,
) -> bool:
    """Bring the stored collection ``name`` to ``schema`` (see the module docstring);
    ``codec`` is the new schema's. True if rows were migrated. Raises
    :class:`~p2pdb.errors.SchemaError`: ``MIGRATION_VERSION_LOWER``,
    ``MIGRATION_STRATEGY_MISSING`` (before anything changes), ``MIGRATION_STRATEGY_FAILED``,
    ``MIGRATION_DOCUMENT_INVALID`` or ``MIGRATION_SOURCE_CHANGED`` (the collection stays at
    its old version)."""
    storage = db.storage
    stored = storage.stored_version(name)
    record = storage.migration_record(name)
    if stored is None or stored[0] == schema.version:
        if record is not None:  # unfinished work, stale once the old version is used
            await storage.migration_abort(name)
        return False
    old_version, old_raw = stored
    if schema.version < old_version:
        raise SchemaError(
            f"Collection {name!r} is stored at schema version {old_version}, newer than the "
            f"given version {schema.version}: an older program cannot open it.",
            code="MIGRATION_VERSION_LOWER",
            collection=name,
            stored_version=old_version,
            version=schema.version,
        )
    total = await storage.count_rows(name)
    if total == 0:  # nothing to migrate: the catalog takes the new schema
        if record is not None:
            await storage.migration_abort(name)
        return False
    steps = list(range(old_version + 1, schema.version + 1))
    given = strategies or {}
    missing = [v for v in steps if not callable(given.get(v))]
    if missing:
        raise SchemaError(
            f"Collection {name!r} holds {total} stored documents at schema version "
            f"{old_version}; migrating them to version {schema.version} needs a strategy for "
            f"each version {steps}: missing {missing}. Pass "
            "add_collection(..., migration_strategies={version: fn}).",
            code="MIGRATION_STRATEGY_MISSING",
            collection=name,
            missing=missing,
        )
    target: dict[str, Any] = {"from": old_version, "to": schema.version, "hash": schema.hash}
    if record is None or {k: record.get(k) for k in target} != target:
        record = await storage.migration_begin(name, {**target, "after": None, "done": 0})
    target["source"] = record["source"]
    old_schema = Schema(old_raw)
    old_codec = _codec(db, name, old_schema)
    run = _Runner(name, schema, [(v, given[v]) for v in steps], old_codec, codec)
    done = int(record["done"])
    _emit(db, MigrationProgress(name, done, total, schema.version, old_version))
    try:
        after = record["after"]
        while rows := storage.migration_source(name, after, batch_size):
            out = []
            for doc_id, seq, rev, lwt, deleted, origin, body in rows:
                new_body = await run.body(doc_id, orjson.loads(body))
                if new_body is not None:  # keeps seq, rev, lwt, origin (docs/migration.md)
                    out.append((doc_id, seq, rev, lwt, deleted, origin, new_body))
            after, done = rows[-1][0], done + len(rows)
            record = {**target, "after": after, "done": done}
            await storage.migration_write(name, out, record)
            _emit(db, MigrationProgress(name, done, total, schema.version, old_version))
        replications = await _migrate_replications(storage, name, run)
        finished = await storage.migration_finish(name, schema, target["source"], replications)
    except P2PDBError as exc:
        # a strategy must start afresh once fixed; rows encoded under a key the file no
        # longer names (another process changed the password) must not be kept
        if exc.code in _ABORTING or isinstance(exc, EncryptionError):
            await storage.migration_abort(name)
        raise
    if not finished:
        await storage.migration_abort(name)
        raise SchemaError(
            f"Another process wrote to collection {name!r} while it was being migrated; "
            "the migration was dropped and nothing changed. Close the other programs that "
            "use the old schema and add the collection again.",
            code="MIGRATION_SOURCE_CHANGED",
            collection=name,
        )
    log.info("migrated %d rows of %r to version %d", done, name, schema.version)
    _emit(db, MigrationProgress(name, total, total, schema.version, old_version))
    return True


def _codec(db: MigrationHost, name: str, schema: Schema) -> BodyCodec | None:
    if not schema.encrypted or db.encryption is None:
        return None
    return db.encryption.codec_for(name, schema)


async def _migrate_replications(
    storage: SQLiteStorage, name: str, run: _Runner
) -> dict[str, dict[str, Any]]:
    """Every replication of the collection: its checkpoints kept, its assumed master
    states run through the same strategies (as RxDB migrates its replication meta)."""
    out: dict[str, dict[str, Any]] = {}
    for collection, replication_id in storage.list_replications():
        if collection != name:
            continue
        state = storage.replication_state(name, replication_id)  # as stored: not opened
        assumed: dict[str, Any] = {}
        for doc_id, stored in state["assumed"].items():
            if not isinstance(stored, dict):
                continue
            extra = {k: v for k, v in stored.items() if k[:1] == "_"}
            body = {k: v for k, v in stored.items() if k[:1] != "_"}
            text = await run.body(doc_id, body)
            if text is not None:
                assumed[doc_id] = {**orjson.loads(text), **extra}
        out[replication_id] = {"up": state["up"], "down": state["down"], "assumed": assumed}
    return out


class _Runner:
    """Runs one stored body through the strategies, checks and re-encodes it."""

    def __init__(
        self,
        name: str,
        schema: Schema,
        steps: list[tuple[int, MigrationStrategy]],
        old_codec: BodyCodec | None,
        new_codec: BodyCodec | None,
    ) -> None:
        self.name, self.schema, self.steps = name, schema, steps
        self.old_codec, self.new_codec = old_codec, new_codec

    async def body(self, doc_id: str, stored: dict[str, Any]) -> str | None:
        """The new stored body (JSON text) of ``stored``, or ``None`` if it is dropped."""
        doc: Any = stored
        if self.old_codec is not None:
            doc = self.old_codec.decode(self.name, doc_id, stored)
        for version, strategy in self.steps:
            try:
                doc = strategy(doc)
                if inspect.isawaitable(doc):
                    doc = await doc
            except Exception as exc:
                raise self._error(
                    "MIGRATION_STRATEGY_FAILED", doc_id, version, f"raised {exc!r}"
                ) from exc
            if doc is None:
                return None
            if not isinstance(doc, dict):
                raise self._error(
                    "MIGRATION_DOCUMENT_INVALID",
                    doc_id,
                    version,
                    f"returned {type(doc).__name__}, not a dict or None",
                )
        try:
            if doc.get(self.schema.primary_key) != doc_id:
                raise SchemaError("the primary key changed", code="MIGRATION_DOCUMENT_INVALID")
            if any(k[:1] == "_" for k in doc):
                raise SchemaError("a field starts with '_'", code="MIGRATION_DOCUMENT_INVALID")
            check_json_values(doc, opaque=self.schema.encrypted)
            self.schema.validate(doc)
        except P2PDBError as exc:
            last = self.steps[-1][0]
            raise self._error("MIGRATION_DOCUMENT_INVALID", doc_id, last, exc.message) from exc
        if self.new_codec is not None:
            doc = self.new_codec.encode(self.name, doc_id, doc)
        return orjson.dumps(doc).decode()

    def _error(self, code: str, doc_id: str, version: int, what: str) -> SchemaError:
        return SchemaError(
            f"Migrating document {doc_id!r} of {self.name!r} to version {version}: the "
            f"strategy {what}. Nothing was changed: the collection stays at its old version; "
            "fix the strategy and add the collection again.",
            code=code,
            collection=self.name,
            document_id=doc_id,
            version=version,
        )
