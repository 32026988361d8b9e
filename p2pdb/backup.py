"""Backups: ``db.export_json()`` and ``db.import_json()`` (RxDB's json-dump plugin, and the
API behind ``p2pdb export`` / ``p2pdb import``).

The dump is one JSON-ready dict, versioned::

    {"format": "p2pdb", "version": 1, "instanceToken": "...",
     "collections": [{"name": "todos", "schema": {...}, "schemaHash": "...",
                      "docs": [{...}, {..., "_deleted": true}],
                      "replications": {"<id>": {"up", "down", "contact", "assumed"}}}]}

``docs`` hold the user fields in change order (revisions and ``_meta`` are local and left
out); tombstones (``"_deleted": true``) and ``replications`` only when asked for. An RxDB
dump (``exportJSON()``: no ``format``, no ``schema``) is read too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .changes import LOCAL
from .collection import Collection, CollectionDatabase
from .errors import NotFoundError, SchemaError, ValidationError
from .schema import Schema
from .storage import Write, WriteTxn

__all__ = [
    "FORMAT_VERSION",
    "BackupDatabase",
    "ExportOptions",
    "ImportOptions",
    "ImportReport",
    "export_docs",
    "export_json",
    "import_json",
]

#: The version of the dump format :func:`export_json` writes (and the newest it reads).
FORMAT_VERSION = 1

_PAGE = 500  # states read per page
_LOCAL_FIELDS = ("_rev", "_meta", "_deleted", "_attachments")


class BackupDatabase(CollectionDatabase, Protocol):
    """What a backup needs from a database (:class:`~p2pdb.Database` provides it)."""

    @property
    def collections(self) -> Mapping[str, Collection]:
        """The collections added to this database object."""
        ...

    async def add_collection(
        self, name: str, schema: Mapping[str, Any], conflict_handler: object = None
    ) -> Collection:
        """Open (or create) a collection."""
        ...


@dataclass(frozen=True)
class ExportOptions:
    """What :func:`export_json` writes: ``collections`` (names; ``None``: every collection
    added to the database), ``tombstones`` (removed documents, their last state with
    ``"_deleted": true``), ``replication_state`` (each replication's checkpoints and assumed
    master states)."""

    collections: Sequence[str] | None = None
    tombstones: bool = False
    replication_state: bool = False


@dataclass(frozen=True)
class ImportOptions:
    """What :func:`import_json` reads: ``collections`` (names; ``None``: all in the dump),
    ``tombstones`` (write the dump's tombstones as removals), ``replication_state`` (restore
    each replication's down checkpoint and assumed master states, see ``docs/backup.md``)."""

    collections: Sequence[str] | None = None
    tombstones: bool = True
    replication_state: bool = False


@dataclass
class ImportReport:
    """What an import did: documents (tombstones included) written per collection, the
    collections it created, and the replications whose state it restored."""

    written: dict[str, int] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)
    replications: dict[str, list[str]] = field(default_factory=dict)


def _format_error(message: str, **parameters: Any) -> ValidationError:
    return ValidationError(message, code="BACKUP_BAD_FORMAT", **parameters)


async def export_docs(
    collection: Collection, tombstones: bool = False
) -> AsyncIterator[list[dict[str, Any]]]:
    """A collection's documents as dump entries, a page at a time, in change order
    (``p2pdb export`` streams these)."""
    name, seq = collection.name, 0
    while True:
        collection.check_open()
        pairs, seq = collection.storage.changes_since(name, seq, _PAGE)
        page = []
        for _, state in pairs:
            if state["_deleted"] and not tombstones:
                continue
            doc = {k: v for k, v in state.items() if k not in _LOCAL_FIELDS}
            if state["_deleted"]:
                doc["_deleted"] = True
            page.append(doc)
        yield page
        if len(pairs) < _PAGE:
            return


async def export_json(db: BackupDatabase, options: ExportOptions) -> dict[str, Any]:
    """The dump of ``db`` (see the module docstring); :meth:`Database.export_json`."""
    db.check_open()
    names = sorted(db.collections) if options.collections is None else list(options.collections)
    dumped = []
    for name in names:
        if name not in db.collections:
            raise NotFoundError(
                f"export_json: no collection {name!r} was added to this database (it has: "
                f"{', '.join(sorted(db.collections)) or 'none'}).",
                code="COLLECTION_NOT_FOUND",
                name=name,
            )
        collection = db.collections[name]
        docs = [doc async for page in export_docs(collection, options.tombstones) for doc in page]
        entry: dict[str, Any] = {
            "name": name,
            "schema": collection.schema.raw,
            "schemaHash": collection.schema.hash,
            "docs": docs,
        }
        if options.replication_state:
            entry["replications"] = {
                rid: db.storage.replication_state(name, rid)
                for col, rid in db.storage.list_replications()
                if col == name
            }
        dumped.append(entry)
    return {
        "format": "p2pdb",
        "version": FORMAT_VERSION,
        "instanceToken": db.token,
        "collections": dumped,
    }


@dataclass
class _Planned:
    """One collection of a dump, checked and ready to write."""

    name: str
    schema: Mapping[str, Any] | None  # to add it with, when it is not added yet
    writes: list[Write]
    replications: dict[str, dict[str, Any]]


def _entries(data: object) -> list[Mapping[str, Any]]:
    if not isinstance(data, Mapping):
        raise _format_error(f"A dump is a dict, got {type(data).__name__}.")
    fmt, version = data.get("format", "p2pdb"), data.get("version", 1)
    if fmt != "p2pdb" or type(version) is not int or version < 1:
        raise _format_error(f"Not a p2pdb dump (format {fmt!r}, version {version!r}).")
    if version > FORMAT_VERSION:
        raise ValidationError(
            f"The dump has format version {version}; this p2pdb reads up to "
            f"{FORMAT_VERSION}. Upgrade p2pdb to import it.",
            code="BACKUP_UNSUPPORTED_VERSION",
            version=version,
        )
    entries = data.get("collections")
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
        raise _format_error("'collections' must be a list of dicts.")
    for entry in entries:
        if not isinstance(entry.get("name"), str) or not isinstance(entry.get("docs"), list):
            raise _format_error("Each collection needs a 'name' string and a 'docs' list.")
        if not isinstance(entry.get("schema", {}), Mapping):
            raise _format_error(f"The 'schema' of {entry['name']!r} is not a dict.")
    return entries


def _target(
    db: BackupDatabase, entry: Mapping[str, Any]
) -> tuple[Collection, Mapping[str, Any] | None]:
    """The collection that validates ``entry``'s documents, and the schema to add it with
    (``None`` when it is added already)."""
    name = entry["name"]
    if name in db.collections:
        return db.collections[name], None
    stored = db.storage.stored_schemas().get(name)
    schema = entry.get("schema", stored)
    if schema is None:
        raise NotFoundError(
            f"The dump's collection {name!r} is not in the database and the dump has no "
            "schema for it: add it with add_collection() first.",
            code="BACKUP_MISSING_COLLECTION",
            name=name,
        )
    checked = Schema(schema)
    if stored is not None:
        kept = Schema(stored)
        if kept.version == checked.version and kept.hash != checked.hash:
            raise SchemaError(
                f"The dump's schema of {name!r} differs from the stored one of the same "
                f"version {checked.version}.",
                code="SCHEMA_MISMATCH",
                collection=name,
            )
    return Collection(db, name, checked), schema  # detached: only validates


def _plan(db: BackupDatabase, entry: Mapping[str, Any], options: ImportOptions) -> _Planned:
    collection, schema = _target(db, entry)
    writes: list[Write] = []
    for index, doc in enumerate(entry["docs"]):
        if not isinstance(doc, Mapping):
            raise _format_error(
                f"Document {index} of {entry['name']!r} is not a dict.",
                collection=entry["name"],
                index=index,
            )
        deleted = doc.get("_deleted") is True
        if deleted and not options.tombstones:
            continue
        try:
            prepared = collection.prepare({k: v for k, v in doc.items() if k not in _LOCAL_FIELDS})
        except ValidationError as exc:
            exc.parameters.update(collection=entry["name"], index=index)
            exc.parameters.setdefault("document_id", doc.get(collection.schema.primary_key))
            raise
        writes.append(Write(prepared, deleted))
    replications = entry.get("replications") if options.replication_state else None
    if replications is not None and not isinstance(replications, Mapping):
        raise _format_error(f"The 'replications' of {entry['name']!r} is not a dict.")
    return _Planned(entry["name"], schema, writes, dict(replications or {}))


async def import_json(
    db: BackupDatabase, data: Mapping[str, Any], options: ImportOptions
) -> ImportReport:
    """Write a dump into ``db``; :meth:`Database.import_json`.

    Every document of every chosen collection is validated against its collection's schema
    (the added collection's, else the stored one's, else the dump's) before anything is
    written: a bad dump raises a typed error and changes nothing. Then each collection is
    written in one transaction (documents are upserted; each gets a new local revision).
    """
    db.check_open()
    entries = _entries(data)
    chosen = options.collections
    plans = [_plan(db, e, options) for e in entries if chosen is None or e["name"] in chosen]
    report = ImportReport()
    for plan in plans:
        if plan.schema is not None:
            await db.add_collection(plan.name, schema=plan.schema)
            report.created.append(plan.name)
    for plan in plans:
        await db.storage.write(_writer(plan))
        report.written[plan.name] = len(plan.writes)
        if plan.replications:
            report.replications[plan.name] = sorted(plan.replications)
    return report


def _writer(plan: _Planned) -> Any:
    def run(txn: WriteTxn) -> None:
        if plan.writes:
            txn.put(plan.name, plan.writes, LOCAL)
        for rid, state in plan.replications.items():
            # The up checkpoint counts in the source file's sequence: meaningless here, so
            # the restored replication pushes again from the start (against assumed states).
            if isinstance(state, Mapping):
                if state.get("down") is not None:
                    txn.set_checkpoint(plan.name, rid, "down", state["down"])
                assumed = state.get("assumed")
                if isinstance(assumed, Mapping):
                    txn.set_assumed(plan.name, rid, dict(assumed))

    return run
