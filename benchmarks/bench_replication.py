"""Replication protocol throughput, in one process, against ``bulk_insert`` of the same docs.

    python benchmarks/bench_replication.py [--rounds 3] [--only pull,push,size] [--batch 100,1000]
        [--size 20000]

Figures (per round, each on fresh database files; medians over rounds):

* baseline: ``bulk_insert`` of the 10,000 ~1 KB documents into a fresh collection.
* pull: an empty fork pulls the 10,000 documents from a master through
  ``collection_handler(master)``:
  ``replicate(fork, collection_handler(master), "bench", push=False)`` then
  ``await state.wait_for_initial_replication()``; docs/s from ``replicate()`` to that
  return, then the replication is cancelled.
* push: the fork holds the documents and the master is empty (``pull=False``).

Each direction runs with ``batch_size`` 100 (the default) and 1000.

* size: the fork's file over the master's after an empty fork pulled ``--size`` documents
  (default 20,000; both databases closed, so the WAL is folded into the main file). The
  fork holds the same documents plus the replication's state (an assumed master state per
  document); the issue's target is <= 1.2.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from _common import (
    SCHEMA,
    Row,
    Timer,
    machine_line,
    make_docs,
    only_from_argv,
    print_table,
    rounds_from_argv,
    temp_dir,
    wanted,
)

import p2pdb
from p2pdb.replication import collection_handler, replicate

DOCS = 10_000


async def open_collection(path: str) -> tuple[p2pdb.Database, p2pdb.Collection]:
    db = await p2pdb.create_database(path)
    return db, await db.add_collection("docs", SCHEMA)


async def baseline(tmp: str, tag: str, docs: list[dict[str, Any]]) -> tuple[float, float]:
    """Wall and process CPU seconds of one ``bulk_insert``."""
    db, col = await open_collection(os.path.join(tmp, f"base-{tag}.db"))
    cpu = time.process_time()
    with Timer() as t:
        result = await col.bulk_insert(docs)
    cpu = time.process_time() - cpu
    assert not result.errors
    await db.close()
    return t.seconds, cpu


async def replicate_once(
    tmp: str, tag: str, docs: list[dict[str, Any]], direction: str, batch_size: int
) -> tuple[float, float]:
    """Wall and process CPU seconds of the initial replication of ``docs`` one way."""
    master_db, master = await open_collection(os.path.join(tmp, f"master-{tag}.db"))
    fork_db, fork = await open_collection(os.path.join(tmp, f"fork-{tag}.db"))
    source, target = (master, fork) if direction == "pull" else (fork, master)
    result = await source.bulk_insert(docs)
    assert not result.errors
    await asyncio.sleep(0.1)  # let the tailers of both databases go idle
    cpu = time.process_time()
    with Timer() as t:
        state = replicate(
            fork,
            collection_handler(master),
            "bench",
            pull=direction == "pull",
            push=direction == "push",
            batch_size=batch_size,
        )
        async with asyncio.timeout(120):
            await state.wait_for_initial_replication()
    cpu = time.process_time() - cpu
    await state.cancel()
    count = await target.count()
    assert count == len(docs), (direction, count)
    await fork_db.close()
    await master_db.close()
    return t.seconds, cpu


def file_size(path: str) -> int:
    """Bytes of a database file and its WAL, if one is left."""
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


async def sizes_after_pull(tmp: str, tag: str, docs: list[dict[str, Any]]) -> tuple[int, int]:
    """``(fork bytes, master bytes)`` after an empty fork pulled ``docs`` (files closed)."""
    master_path, fork_path = (
        os.path.join(tmp, f"smaster-{tag}.db"),
        os.path.join(tmp, f"sfork-{tag}.db"),
    )
    master_db, master = await open_collection(master_path)
    fork_db, fork = await open_collection(fork_path)
    result = await master.bulk_insert(docs)
    assert not result.errors
    state = replicate(fork, collection_handler(master), "bench", push=False)
    async with asyncio.timeout(600):
        await state.wait_for_initial_replication()
    await state.cancel()
    assert await fork.count() == len(docs)
    await fork_db.close()
    await master_db.close()
    return file_size(fork_path), file_size(master_path)


async def main() -> int:
    rounds = rounds_from_argv(3)
    only = only_from_argv()
    batches = (
        [int(b) for b in sys.argv[sys.argv.index("--batch") + 1].split(",")]
        if "--batch" in sys.argv
        else [100, 1000]
    )
    docs = make_docs(DOCS)
    size_docs = int(sys.argv[sys.argv.index("--size") + 1]) if "--size" in sys.argv else 20_000
    sizes: list[tuple[int, int]] = []
    base = Row("bulk_insert 10k docs", "docs/s")
    base_cpu = Row("bulk_insert 10k docs", "docs/CPU-s")
    rows: dict[tuple[str, int], Row] = {}
    cpu_rows: dict[tuple[str, int], Row] = {}
    for direction in ("pull", "push"):
        if wanted(only, direction):
            for b in batches:
                name = f"{direction} 10k docs, batch_size {b}"
                rows[direction, b] = Row(name, "docs/s", "bulk_insert", target=0.60)
                cpu_rows[direction, b] = Row(name, "docs/CPU-s", "bulk_insert", target=0.60)
    for r in range(rounds):
        with temp_dir() as tmp:
            base_s, base_c = await baseline(tmp, f"{r}a", docs)
            for (direction, b), row in rows.items():
                seconds, cpu = await replicate_once(tmp, f"{r}{direction}{b}", docs, direction, b)
                row.add(DOCS / seconds)
                cpu_rows[direction, b].add(DOCS / cpu)
            # a second baseline at the end of the round; the round's baseline is their mean
            again_s, again_c = await baseline(tmp, f"{r}b", docs)
            base_s, base_c = (base_s + again_s) / 2, (base_c + again_c) / 2
            base.add(DOCS / base_s)
            base_cpu.add(DOCS / base_c)
            for row in rows.values():
                row.baselines.append(DOCS / base_s)
            for row in cpu_rows.values():
                row.baselines.append(DOCS / base_c)
            if size_docs and wanted(only, "size"):
                sizes.append(await sizes_after_pull(tmp, str(r), make_docs(size_docs)))
    print(f"bench_replication: {machine_line()}")
    notes = [
        f"{DOCS:,} docs of ~1 KB; baseline = mean of a bulk_insert before and after the "
        "round's replications",
        "time from replicate() to wait_for_initial_replication() returning",
    ]
    print_table(
        "Replication (same process, collection_handler)", [base, *rows.values()], rounds, notes
    )
    print_table(
        "The same, process CPU time (both threads; less sensitive to a loaded machine)",
        [base_cpu, *cpu_rows.values()],
        rounds,
    )
    if sizes:
        ratios = sorted(f / m for f, m in sizes)
        mb = 1024 * 1024
        print(
            f"\n  fork file / master file after pulling {size_docs:,} docs: "
            f"{ratios[len(ratios) // 2]:.3f} (rounds: {', '.join(f'{x:.3f}' for x in ratios)}; "
            f"fork {sizes[0][0] / mb:.1f} MB, master {sizes[0][1] / mb:.1f} MB)  target <= 1.2"
        )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
