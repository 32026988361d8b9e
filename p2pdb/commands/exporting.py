"""``p2pdb export FILE``: a database's documents as JSON lines, for backups and moving data.

The format (read back by ``p2pdb import``), one JSON object per line:

- ``{"collection": NAME, "schema": {...}}`` once per collection, before its documents;
- ``{"collection": NAME, "document": {...}}`` per document: its fields, without ``_rev``
  and ``_meta``; a tombstone (only with ``--tombstones``) is its last state plus
  ``"_deleted": true``.

Encrypted fields are written decrypted, so a database with encrypted fields is exported
only with its password (otherwise ``ENCRYPTION_PASSWORD_REQUIRED``): keep such exports safe.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from contextlib import nullcontext
from typing import IO

import orjson

from .base import Command, add_password_options, existing_database, open_file, read_password
from .output import StatusLine

__all__ = ["COMMAND", "export_lines"]


async def export_lines(
    path: str,
    out: IO[str],
    *,
    password: str | None = None,
    collections: list[str] | None = None,
    tombstones: bool = False,
    progress: Callable[[str, int], None] = lambda _name, _count: None,
) -> dict[str, int]:
    """Write the export of the database ``path`` to ``out``; documents written per
    collection. ``progress(collection, count)`` is called after each page. The documents
    are those of ``db.export_json()`` (:func:`p2pdb.backup.export_docs`), one per line."""
    import p2pdb
    from p2pdb.backup import export_docs
    from p2pdb.errors import NotFoundError

    existing_database(path)
    written: dict[str, int] = {}
    async with p2pdb.create_database(path, password=password) as db:
        schemas = db.storage.stored_schemas()
        names = collections if collections else sorted(schemas)
        for name in names:
            if name not in schemas:
                raise NotFoundError(
                    f"The database {path!r} has no collection {name!r} (it has: "
                    f"{', '.join(sorted(schemas)) or 'none'}).",
                    code="CLI_NO_SUCH_COLLECTION",
                    collection=name,
                )
            collection = await db.add_collection(name, schema=schemas[name])
            out.write(orjson.dumps({"collection": name, "schema": schemas[name]}).decode() + "\n")
            count = 0
            async for page in export_docs(collection, tombstones):
                for doc in page:
                    out.write(orjson.dumps({"collection": name, "document": doc}).decode() + "\n")
                count += len(page)
                progress(name, count)
            written[name] = count
    out.flush()
    return written


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="the database file")
    parser.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        default="-",
        help="write the JSON lines to PATH (default: stdout)",
    )
    parser.add_argument(
        "--collection",
        action="append",
        metavar="NAME",
        help="export only this collection (repeatable; default: all)",
    )
    parser.add_argument(
        "--tombstones",
        action="store_true",
        help='also export deleted documents (their last state, with "_deleted": true)',
    )
    add_password_options(parser)


async def _run(args: argparse.Namespace) -> int:
    password = read_password(args)
    status = StatusLine(sys.stderr, interval=5.0)

    def progress(name: str, count: int) -> None:
        status.show(f"exporting {name}: {count} documents")

    target = nullcontext(sys.stdout) if args.output == "-" else open_file(args.output, "w")
    with target as out:
        written = await export_lines(
            args.file,
            out,
            password=password,
            collections=args.collection,
            tombstones=args.tombstones,
            progress=progress,
        )
    summary = ", ".join(f"{n} documents of {name}" for name, n in written.items())
    status.finish(f"exported {summary or 'no collections'}")
    return 0


COMMAND = Command(
    name="export",
    help="write a database's documents as JSON lines (backup, moving data)",
    description=(
        "Write every collection's schema and documents as JSON lines (see docs/cli.md for "
        "the format). Encrypted fields are written decrypted, so a database with encrypted "
        "fields needs its password. Progress goes to stderr."
    ),
    configure=_configure,
    run=_run,
)
