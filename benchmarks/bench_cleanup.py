"""Tombstone cleanup: time to purge N tombstones, and whether writes stall meanwhile.

    python benchmarks/bench_cleanup.py [--n 20000] [--full] [--rounds 1] [--batch 100]

``--full`` purges 100,000 tombstones (the issue's figure). Per round, for each batch size
(the default 100, and one single transaction of all N for comparison):

* a fresh file gets N ~1 KB documents (``bulk_insert``), all removed (N tombstones);
* baseline: single ``insert()`` calls one after the other, 300 of them, latency each;
* cleanup: ``collection.cleanup(min_age=0)`` runs while the same loop of single inserts
  goes on until it returns; its time, and the p99 / max latency of those inserts.

The ratio is baseline p99 / p99 during cleanup (1.0 = writes unaffected; higher is better).
"""

from __future__ import annotations

import asyncio
import sys
import time

from _common import (
    SCHEMA,
    Row,
    Timer,
    machine_line,
    make_docs,
    percentile,
    print_table,
    rounds_from_argv,
    temp_dir,
)

import p2pdb
from p2pdb.cleanup import DEFAULT_BATCH_SIZE, purge_tombstones
from p2pdb.storage import Write


def arg(name: str, default: int) -> int:
    return int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


async def tombstones(folder: str, n: int) -> tuple[p2pdb.Database, p2pdb.Collection]:
    """A new database with ``n`` tombstones of ~1 KB documents."""
    db = await p2pdb.create_database(f"{folder}/bench-{time.monotonic_ns()}.db")
    docs = await db.add_collection("docs", schema=SCHEMA)
    for start in range(0, n, 5000):
        chunk = make_docs(min(5000, n - start), seed=start, prefix=f"d{start}-")
        await docs.bulk_insert(chunk)
        await docs.bulk_write([Write(doc, deleted=True) for doc in chunk])
    # lwt may run ahead of the clock by 10 us per write in one transaction: wait it out
    last = docs.storage.changes_since("docs", docs.storage.current_seq() - 1, 1)[0]
    ahead = last[-1][1]["_meta"]["lwt"] / 1000 - time.time() if last else 0
    if ahead >= 0:
        await asyncio.sleep(ahead + 0.002)
    return db, docs


async def insert_latencies(docs: p2pdb.Collection, until: asyncio.Task[int] | int) -> list[float]:
    """Latencies (ms) of single inserts: ``until`` of them, or until the task is done."""
    out: list[float] = []
    body = make_docs(1, seed=7)[0]
    while (len(out) < until) if isinstance(until, int) else not until.done():
        body = {**body, "id": f"w{time.monotonic_ns()}"}
        start = time.perf_counter()
        await docs.insert(body)
        out.append((time.perf_counter() - start) * 1000)
    return out


async def one_round(folder: str, n: int, batch: int, rows: dict[str, Row]) -> None:
    db, docs = await tombstones(folder, n)
    try:
        baseline = await insert_latencies(docs, 300)
        with Timer() as timer:
            cleanup = asyncio.create_task(purge_tombstones(docs, 0, batch_size=batch))
            during = await insert_latencies(docs, cleanup)
            purged = await cleanup
        assert purged == n, (purged, n)
        assert await docs.count() == len(baseline) + len(during)
    finally:
        await db.close()
    label = f"batch {batch}" if batch < n else "one transaction"
    rows.setdefault(f"time {label}", Row(f"cleanup time, {label}", "s")).add(timer.seconds)
    rows.setdefault(f"rate {label}", Row(f"tombstones/s, {label}", "/s")).add(n / timer.seconds)
    rows.setdefault(
        f"p99 {label}",
        Row(
            f"p99 insert during cleanup, {label}",
            "ms",
            "p99 insert, no cleanup",
            higher_is_better=False,
        ),
    ).add(percentile(during, 99), percentile(baseline, 99))
    rows.setdefault(f"max {label}", Row(f"max insert during cleanup, {label}", "ms")).add(
        max(during)
    )
    rows.setdefault(f"count {label}", Row(f"inserts during cleanup, {label}", "")).add(
        len(during)
    )


async def main() -> None:
    n = 100_000 if "--full" in sys.argv else arg("--n", 20_000)
    batch = arg("--batch", DEFAULT_BATCH_SIZE)
    rounds = rounds_from_argv(1)
    rows: dict[str, Row] = {}
    with temp_dir() as folder:
        for _ in range(rounds):
            for size in (batch, n):
                await one_round(folder, n, size, rows)
    print(machine_line())
    print_table(
        f"Tombstone cleanup of {n:,} tombstones (~1 KB documents)",
        list(rows.values()),
        rounds,
        notes=["ratio: p99 of single inserts without cleanup / with (1.0 = no stall)"],
    )


if __name__ == "__main__":
    asyncio.run(main())
