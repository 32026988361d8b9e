"""``p2pdb migrate FILE --collection NAME --schema SCHEMA.json --strategies MODULE:NAME``:
run a schema migration from the command line, with a progress line on stderr.

The strategies are a dict ``{version: function}`` named ``NAME`` in the Python module
``MODULE`` (imported with the current folder first on the path). The same migration runs
when an application calls ``add_collection(..., migration_strategies=...)``; this command
is for migrating a large file ahead of time, or resuming one that was interrupted. See
``docs/migration.md``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Mapping
from typing import Any

from ..errors import ValidationError
from .base import Command, add_password_options, existing_database, read_json_file, read_password
from .output import StatusLine

__all__ = ["COMMAND", "load_strategies"]


def load_strategies(spec: str) -> Mapping[int, Any]:
    """The dict named by ``MODULE:NAME``; ``CLI_MIGRATION_STRATEGIES`` if it is not one."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValidationError(
            f"--strategies {spec!r} must be MODULE:NAME, e.g. myapp.migrations:NOTES.",
            code="CLI_MIGRATION_STRATEGIES",
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        value = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValidationError(
            f"--strategies {spec!r}: {exc}.", code="CLI_MIGRATION_STRATEGIES"
        ) from None
    if not isinstance(value, Mapping) or not all(isinstance(k, int) for k in value):
        raise ValidationError(
            f"--strategies {spec!r} must name a dict of version (int) -> function.",
            code="CLI_MIGRATION_STRATEGIES",
        )
    return value


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="the database file")
    parser.add_argument("--collection", required=True, metavar="NAME", help="the collection")
    parser.add_argument(
        "--schema", required=True, metavar="PATH", help="the new schema (a JSON file)"
    )
    parser.add_argument(
        "--strategies",
        required=True,
        metavar="MODULE:NAME",
        help="a dict {version: function} in an importable Python module",
    )
    add_password_options(parser)


async def _run(args: argparse.Namespace) -> int:
    import p2pdb
    from p2pdb.migration import migration_progress

    password = read_password(args)
    existing_database(args.file)
    schema = read_json_file(args.schema, "schema file")
    strategies = load_strategies(args.strategies)
    status = StatusLine(sys.stderr, interval=1.0)
    async with p2pdb.create_database(args.file, password=password) as db:
        migration_progress(db).subscribe(
            lambda p: status.show(
                f"migrating {p.collection} {p.from_version} -> {p.version}: "
                f"{p.done}/{p.total} documents"
            )
        )
        collection = await db.add_collection(
            args.collection, schema, migration_strategies=strategies
        )
        count = await collection.count()
    status.finish(f"{args.collection} is at version {schema.get('version', 0)}: {count} documents")
    return 0


COMMAND = Command(
    name="migrate",
    help="migrate a collection to a new schema version (resumable)",
    description=(
        "Bring a collection to a new schema version with migration strategies (a dict "
        "{version: function} in a Python module). Interrupted, it continues where it "
        "stopped when run again. Progress goes to stderr. See docs/migration.md."
    ),
    configure=_configure,
    run=_run,
)
