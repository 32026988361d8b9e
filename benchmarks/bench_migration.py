"""Schema migration rate, as a ratio of ``bulk_insert`` of the same documents.

    python benchmarks/bench_migration.py [--docs 20000] [--runs 3] [--full]

Each run creates a fresh database file, times ``bulk_insert`` of all documents (~1 KB each,
one transaction, the baseline), closes it, then times opening the collection again at
version 1 with one trivial strategy (``add_collection(..., migration_strategies={1: fn})``:
every row read, run through the strategy, validated, re-encoded and written in batches, the
table swapped and its index rebuilt). ``--full`` uses 100,000 documents. Figures are medians
over the runs. Target: migration docs/s / bulk_insert docs/s >= 0.5.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import string
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import p2pdb  # noqa: E402

SCHEMA: dict[str, Any] = {
    "version": 0,
    "primaryKey": "id",
    "type": "object",
    "properties": {
        "id": {"type": "string", "maxLength": 40},
        "title": {"type": "string"},
        "n": {"type": "integer"},
        "body": {"type": "string"},
    },
    "required": ["id", "title", "body"],
    "indexes": ["n"],
}


def make_docs(count: int) -> list[dict[str, Any]]:
    rng = random.Random(7)
    alphabet = string.ascii_letters + string.digits + " "
    body = "".join(rng.choices(alphabet, k=4096))
    return [
        {"id": f"doc-{i:06d}", "title": f"note {i}", "n": i, "body": body[i % 3000 :][:1000]}
        for i in range(count)
    ]


def upper_title(doc: dict[str, Any]) -> dict[str, Any]:
    """The trivial strategy: one field changed."""
    doc["title"] = doc["title"].upper()
    return doc


async def one_run(folder: str, docs: list[dict[str, Any]]) -> tuple[float, float]:
    """``(bulk_insert seconds, migration seconds)`` on a fresh file."""
    path = os.path.join(folder, f"m{time.monotonic_ns()}.db")
    async with p2pdb.create_database(path) as db:
        notes = await db.add_collection("notes", SCHEMA)
        started = time.perf_counter()
        result = await notes.bulk_insert(docs)
        insert = time.perf_counter() - started
        assert not result.errors, result.errors[:3]
    async with p2pdb.create_database(path) as db:
        started = time.perf_counter()
        notes = await db.add_collection(
            "notes", {**SCHEMA, "version": 1}, migration_strategies={1: upper_title}
        )
        migrate = time.perf_counter() - started
        last = await notes.find_one(docs[-1]["id"])
        assert last is not None and last["title"] == docs[-1]["title"].upper()
    os.remove(path)
    return insert, migrate


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="100,000 documents")
    args = parser.parse_args()
    count = 100_000 if args.full else args.docs
    docs = make_docs(count)
    inserts, migrations, ratios = [], [], []
    with tempfile.TemporaryDirectory(prefix="p2pdb-bench-") as folder:
        for _ in range(args.runs):
            insert, migrate = await one_run(folder, docs)
            inserts.append(count / insert)
            migrations.append(count / migrate)
            ratios.append(insert / migrate)
    print(f"schema migration, {count} docs of ~1 KB, {args.runs} runs (medians)")
    print(f"  bulk_insert : {statistics.median(inserts):>10,.0f} docs/s")
    print(f"  migration   : {statistics.median(migrations):>10,.0f} docs/s")
    ratio = statistics.median(ratios)
    print(f"  ratio       : {ratio:.2f} (target >= 0.5) {'OK' if ratio >= 0.5 else 'BELOW'}")


if __name__ == "__main__":
    asyncio.run(main())
