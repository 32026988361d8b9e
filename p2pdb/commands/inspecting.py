"""``p2pdb inspect FILE``: what a database file holds, without a password and without
changing it: collections, document and tombstone counts, schema versions, encrypted fields,
replications and their checkpoints."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from ..schema import Schema
from ..storage import SQLiteStorage
from .base import Command, existing_database

__all__ = ["COMMAND", "describe"]

_PAGE = 1000  # states read per page when counting


async def describe(path: str) -> dict[str, Any]:
    """A JSON-ready description of the database file ``path`` (which must exist)."""
    existing_database(path)
    async with await SQLiteStorage.open(path) as storage:
        schemas = storage.stored_schemas()
        collections = []
        for name, schema in sorted(schemas.items()):
            # no codec: bodies are only counted, never decoded, so no password is needed
            await storage.ensure_collection(name, Schema(schema))
            live = deleted = 0
            seq = 0
            while True:
                pairs, seq = storage.changes_since(name, seq, _PAGE)
                for _, state in pairs:
                    if state["_deleted"]:
                        deleted += 1
                    else:
                        live += 1
                if len(pairs) < _PAGE:
                    break
            collections.append(
                {
                    "name": name,
                    "schema_version": schema.get("version"),
                    "primary_key": schema.get("primaryKey"),
                    "documents": live,
                    "tombstones": deleted,
                    "last_seq": storage.last_seq(name),
                    "encrypted_fields": list(schema.get("encrypted") or []),
                    "migration": storage.migration_record(name),  # None: none under way
                }
            )
        replications = [
            {
                "collection": collection,
                "replication_id": replication_id,
                "down_checkpoint": storage.get_checkpoint(collection, replication_id, "down"),
                "up_checkpoint": storage.get_checkpoint(collection, replication_id, "up"),
                "last_contact": _iso(storage.get_last_contact(collection, replication_id)),
            }
            for collection, replication_id in storage.list_replications()
        ]
        return {
            "path": path,
            "token": storage.token,
            "encrypted": any(c["encrypted_fields"] for c in collections),
            "collections": collections,
            "replications": replications,
        }


def _iso(when: float | None) -> str | None:
    """A Unix time as ISO 8601 UTC to the second, or ``None``."""
    if when is None:
        return None
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds")


def _text(info: dict[str, Any]) -> str:
    lines = [
        f"database {info['path']}  (token {info['token']})",
        f"encrypted fields: {'yes' if info['encrypted'] else 'none'}",
        f"collections: {len(info['collections'])}",
    ]
    for c in info["collections"]:
        lines.append(
            f"  {c['name']}  schema version {c['schema_version']}  documents {c['documents']}  "
            f"tombstones {c['tombstones']}  last seq {c['last_seq']}"
        )
        if c["encrypted_fields"]:
            lines.append(f"    encrypted: {', '.join(c['encrypted_fields'])}")
        if c["migration"]:
            lines.append(f"    migration under way: {c['migration']}")
    lines.append(f"replications: {len(info['replications'])}")
    for r in info["replications"]:
        down = json.dumps(r["down_checkpoint"])
        up = json.dumps(r["up_checkpoint"])
        contact = r["last_contact"] or "never"
        lines.append(
            f"  {r['collection']}  {r['replication_id']}  down {down}  up {up}  "
            f"last contact {contact}"
        )
    return "\n".join(lines)


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="the database file")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")


async def _run(args: argparse.Namespace) -> int:
    info = await describe(args.file)
    print(json.dumps(info, indent=2) if args.json else _text(info))
    return 0


COMMAND = Command(
    name="inspect",
    help="show what a database file holds",
    description=(
        "Show a database file's collections (schema version, documents, tombstones, "
        "encrypted fields) and its replications with their checkpoints. Needs no password "
        "and changes nothing."
    ),
    configure=_configure,
    run=_run,
)
