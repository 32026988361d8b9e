"""Encryption at rest: write and read rates with and without one encrypted ~1 KB field.

    python benchmarks/bench_encryption.py [--docs 10000] [--runs 5]

Each run creates two fresh database files: one opened with a password whose collection
encrypts ``body``, one without a password and the same schema minus ``encrypted``. On each
it times ``bulk_insert`` of all documents (one transaction), then reading every document
back by id, one awaited ``find_one`` after another, then one ``find_by_ids`` of all ids. The
two variants alternate within a run so machine noise hits both alike; the figures are
medians over the runs. Targets (issue 12): encrypted / plain >= 0.80 for ``find_one`` and
``find_by_ids``. Opening (scrypt, once per open) is timed separately and left out of the
rates.

Rates are by the wall clock. The last column compares CPU time of the process instead
(``time.process_time``, all its threads): other programs on a busy machine slow the wall
clock of both variants unevenly, much less their CPU time. It is the median of the runs'
own ratios (each run's encrypted variant against its plain one), with their range.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
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

PASSWORD = "correct horse battery staple"
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
    return [
        {
            "id": f"doc-{i:06d}",
            "title": f"note {i}",
            "n": i,
            "body": "".join(rng.choices(alphabet, k=1024)),
        }
        for i in range(count)
    ]


async def one_variant(folder: str, encrypted: bool, docs: list[dict[str, Any]]) -> dict[str, float]:
    path = os.path.join(folder, "enc.db" if encrypted else "plain.db")
    schema = {**SCHEMA, "encrypted": ["body"]} if encrypted else SCHEMA
    started = time.perf_counter()
    db = await p2pdb.create_database(path, password=PASSWORD if encrypted else None)
    opened = time.perf_counter() - started
    try:
        notes = await db.add_collection("notes", schema=schema)
        ids = [d["id"] for d in docs]
        wall: dict[str, float] = {}
        cpu: dict[str, float] = {}

        async def write() -> None:
            result = await notes.bulk_insert(docs)
            assert not result.errors, result.errors[:3]

        async def find_one() -> None:
            for doc_id in ids:
                assert await notes.find_one(doc_id) is not None

        async def find_by_ids() -> None:
            found = await notes.find_by_ids(ids)
            assert len(found) == len(ids) and found[ids[-1]].get("body") == docs[-1]["body"]

        for phase in (write, find_one, find_by_ids):
            gc.collect()  # a collection left over from the previous phase or run is not ours
            started, started_cpu = time.perf_counter(), time.process_time()
            await phase()
            wall[phase.__name__] = time.perf_counter() - started
            cpu[phase.__name__] = time.process_time() - started_cpu
    finally:
        await db.close()
    n = len(docs)
    return {
        "open_ms": opened * 1000,
        **{key: n / seconds for key, seconds in wall.items()},
        **{f"{key}_cpu": n / seconds for key, seconds in cpu.items()},
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    docs = make_docs(args.docs)
    results: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for run in range(args.runs):
        order = [False, True] if run % 2 == 0 else [True, False]
        for encrypted in order:
            with tempfile.TemporaryDirectory(prefix="p2pdb-bench-enc-") as folder:
                results[encrypted].append(await one_variant(folder, encrypted, docs))

    def median(encrypted: bool, key: str) -> float:
        return statistics.median(r[key] for r in results[encrypted])

    def cpu_ratios(key: str) -> str:
        ratios = [e[key] / p[key] for p, e in zip(results[False], results[True], strict=True)]
        return f"{statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]"

    print(f"{args.docs} documents with a 1 KB body, median of {args.runs} runs")
    print(f"{'':22}{'plain':>10}{'encrypted':>12}{'ratio':>8}  ratio (CPU) [min-max]")
    for key in ("write", "find_one", "find_by_ids"):
        plain, enc = median(False, key), median(True, key)
        label, cpu = f"{key} (docs/s)", cpu_ratios(key + "_cpu")
        print(f"{label:22}{plain:>10,.0f}{enc:>12,.0f}{enc / plain:>8.2f}  {cpu}")
    print(
        f"open with password (scrypt): {median(True, 'open_ms'):.0f} ms "
        f"(without: {median(False, 'open_ms'):.0f} ms)"
    )


if __name__ == "__main__":
    asyncio.run(main())
