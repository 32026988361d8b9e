"""``p2pdb import FILE``: read JSON lines (the format of ``p2pdb export``, or plain documents
with ``--collection``) into a database.

Every document is validated against the collection's stored schema (a ``schema`` line
creates a missing collection; one that differs from the stored schema of the same version
stops the import with ``SCHEMA_MISMATCH``). Invalid lines are reported on stderr with their
line number and skipped; the others are written, one transaction per batch. Documents are
upserted: an id already in the file is overwritten, and a line with ``"_deleted": true``
deletes (or records the tombstone of) its id. Revisions are not imported: each written
document gets a new local revision. Each batch is written by ``db.import_json()``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import ValidationError
from .base import (
    Command,
    add_password_options,
    check_database_folder,
    open_file,
    read_password,
)
from .output import StatusLine

if TYPE_CHECKING:
    from ..collection import Collection
    from ..database import Database

__all__ = ["COMMAND", "ImportResult", "import_lines"]


@dataclass
class ImportResult:
    """What an import did: documents written per collection, and the rejected lines."""

    written: dict[str, int] = field(default_factory=dict)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    lines: int = 0


def _line_error(message: str) -> ValidationError:
    return ValidationError(message, code="CLI_IMPORT_LINE")


class _Importer:
    """Reads lines, validates them and writes them in batches."""

    def __init__(
        self, db: Database, default: str | None, batch_size: int, status: StatusLine
    ) -> None:
        self.db = db
        self.default = default
        self.batch_size = batch_size
        self.status = status
        self.result = ImportResult()
        self.pending: list[dict[str, Any]] = []  # documents of self.target, checked
        self.target: Collection | None = None

    async def collection(self, name: object) -> Collection:
        if not isinstance(name, str):
            raise _line_error("'collection' must be a string.")
        if name in self.db.collections:
            return self.db.collections[name]
        stored = self.db.storage.stored_schemas()
        if name not in stored:
            raise _line_error(
                f"No collection {name!r} in the database and no schema line for it before."
            )
        return await self.db.add_collection(name, schema=stored[name])

    async def line(self, number: int, text: bytes) -> None:
        self.result.lines = number
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise _line_error(f"not JSON: {exc}.") from None
        if self.default is not None:
            await self.document(await self.collection(self.default), value)
            return
        if not isinstance(value, dict) or ("schema" in value) == ("document" in value):
            raise _line_error(
                'expected {"collection": NAME, "schema": {...}} or '
                '{"collection": NAME, "document": {...}} (plain documents need --collection).'
            )
        if "schema" in value:
            name = value["collection"]
            if name not in self.db.collections:
                await self.flush()
                await self.db.add_collection(name, schema=value["schema"])
            return
        await self.document(await self.collection(value["collection"]), value["document"])

    async def document(self, collection: Collection, doc: Any) -> None:
        deleted = False
        if isinstance(doc, dict):
            deleted = doc.get("_deleted") is True
            doc = {k: v for k, v in doc.items() if k not in ("_deleted", "_rev", "_meta")}
        prepared = collection.prepare(doc)
        if collection is not self.target:
            await self.flush()
            self.target = collection
        self.pending.append({**prepared, "_deleted": True} if deleted else prepared)
        if len(self.pending) >= self.batch_size:
            await self.flush()

    async def flush(self) -> None:
        if not self.pending or self.target is None:
            return
        writes, self.pending = self.pending, []
        name = self.target.name
        dump = {"format": "p2pdb", "version": 1, "collections": [{"name": name, "docs": writes}]}
        await self.db.import_json(dump)  # one transaction
        self.result.written[name] = self.result.written.get(name, 0) + len(writes)
        total = sum(self.result.written.values())
        self.status.show(f"importing: line {self.result.lines}, {total} documents written")


async def import_lines(
    path: str,
    lines: Iterable[bytes],
    *,
    password: str | None = None,
    collection: str | None = None,
    batch_size: int = 500,
    status: StatusLine | None = None,
) -> ImportResult:
    """Import JSON lines into the database ``path`` (created if missing)."""
    import p2pdb

    shown = status if status is not None else StatusLine(sys.stderr, interval=5.0)
    check_database_folder(path)
    async with p2pdb.create_database(path, password=password) as db:
        importer = _Importer(db, collection, batch_size, shown)
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            try:
                await importer.line(number, text)
            except ValidationError as exc:
                if exc.code == "SCHEMA_MISMATCH":
                    raise
                importer.result.rejected.append((number, str(exc)))
                shown.message(f"line {number}: {exc}")
        await importer.flush()
        return importer.result


def _batch_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="the database file (created if missing)")
    parser.add_argument(
        "-i",
        "--input",
        metavar="PATH",
        default="-",
        help="read the JSON lines from PATH (default: stdin)",
    )
    parser.add_argument(
        "--collection",
        metavar="NAME",
        help="every line is a plain document of this collection (which must exist in FILE)",
    )
    parser.add_argument(
        "--batch-size",
        type=_batch_size,
        default=500,
        metavar="N",
        help="documents per transaction (default: %(default)s)",
    )
    add_password_options(parser)


async def _run(args: argparse.Namespace) -> int:
    if args.password_stdin and args.input == "-":
        raise ValidationError(
            "--password-stdin needs stdin, which carries the data: use --input PATH, or "
            "--password-env.",
            code="CLI_USAGE",
        )
    password = read_password(args)
    status = StatusLine(sys.stderr, interval=5.0)
    source = nullcontext(sys.stdin.buffer) if args.input == "-" else open_file(args.input, "rb")
    with source as lines:
        result = await import_lines(
            args.file,
            lines,
            password=password,
            collection=args.collection,
            batch_size=args.batch_size,
            status=status,
        )
    summary = ", ".join(f"{n} into {name}" for name, n in result.written.items())
    status.finish(f"imported {summary or 'nothing'}; {len(result.rejected)} lines rejected")
    return 1 if result.rejected else 0


COMMAND = Command(
    name="import",
    help="read JSON lines (from p2pdb export, or plain documents) into a database",
    description=(
        "Read JSON lines into a database: the output of 'p2pdb export', or plain documents "
        "with --collection. Each document is validated against the stored schema; invalid "
        "lines are reported with their line number and skipped (exit status 1), the others "
        "are written, one transaction per batch."
    ),
    configure=_configure,
    run=_run,
)
