"""Several collections in one topic: one shared connection against one per collection.

    python benchmarks/bench_collections.py [--rounds 5] [--collections 4] [--docs 300]

Two databases on loopback, each replicating ``--collections`` collections in one topic; one
side holds ``--docs`` documents in each. Each round, in alternating order, runs the same sync
twice:

* **shared** (what ``replicate_webrtc`` does now): the pools of a database share one handler
  factory, so one signaling membership and one peer connection per remote database, a data
  channel per collection;
* **separate** (the baseline): a factory and a topic per collection, as RxDB does (and as a
  p2pdb app had to, since two collections in one topic used to pair a pool of one with the
  other side's pool of the other): a handler, a signaling membership and a peer connection
  per collection.

Figures: the time from starting the pools until every collection converged on the other
side, the process CPU time over the same span (both databases, every thread of the
process: aiortc is pure Python), and the peer connections made. Ratios are separate /
shared for times (>1: shared is cheaper).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

from _common import SCHEMA, Row, machine_line, make_docs, print_table, rounds_from_argv, temp_dir

import p2pdb
from p2pdb.plugins.replication_webrtc import (
    aiortc_connection_handler,
    replicate_webrtc,
    start_signaling_server,
)
from p2pdb.tokens import random_token


def _arg(name: str, default: int) -> int:
    flag = f"--{name}"
    return int(sys.argv[sys.argv.index(flag) + 1]) if flag in sys.argv else default


async def one_sync(
    url: str, folder: str, shared: bool, collections: int, docs: int
) -> tuple[float, float, int]:
    """(seconds, CPU seconds, peer connections) of one sync of every collection."""
    topic = "bench-" + random_token(10)
    names = [f"c{i}" for i in range(collections)]
    dbs = [await p2pdb.create_database(str(Path(folder) / f"{topic}-{side}.db")) for side in "ab"]
    try:
        cols = [[await db.add_collection(n, schema=SCHEMA) for n in names] for db in dbs]
        for col in cols[0]:
            await col.bulk_insert(make_docs(docs, prefix=col.name))
        factories: list[Any] = []

        def factory() -> Any:
            made = aiortc_connection_handler(url, ice_servers=[], host_addresses=["127.0.0.1"])
            factories.append(made)
            return made

        started, cpu = time.perf_counter(), time.process_time()
        pools = []
        for side in range(2):
            one = factory()
            for col in cols[side]:
                if shared:
                    pools.append(await replicate_webrtc(col, topic, one))
                else:  # a topic per collection, as RxDB does (and as p2pdb needed before)
                    pools.append(await replicate_webrtc(col, f"{topic}-{col.name}", factory()))
        async with asyncio.timeout(120):
            await asyncio.gather(*(_converged(col, docs) for col in cols[1]))
        elapsed, used = time.perf_counter() - started, time.process_time() - cpu
        connections = len({id(link) for p in pools[:collections] for link in p.connection.links})
        for pool in pools:
            await pool.cancel()
        return elapsed, used, connections
    finally:
        for db in dbs:
            await db.close()


async def _converged(col: p2pdb.Collection, docs: int) -> None:
    changed = asyncio.Event()
    subscription = col.changes.subscribe(lambda _e: changed.set())
    try:
        while True:
            changed.clear()
            if await col.count() >= docs:
                return
            await changed.wait()
    finally:
        subscription.dispose()


async def main() -> None:
    rounds = rounds_from_argv(5)
    collections, docs = _arg("collections", 4), _arg("docs", 300)
    sync = Row("sync, shared connection", "ms", "one per collection", higher_is_better=False)
    cpu = Row("CPU, shared connection", "ms", "one per collection", higher_is_better=False)
    counts: dict[bool, int] = {}
    with temp_dir() as folder:
        async with await start_signaling_server(port=0) as server:
            await one_sync(server.url, folder, True, 1, 10)  # warm up
            for n in range(rounds):
                order = (True, False) if n % 2 else (False, True)
                result = {}
                for shared in order:
                    result[shared] = await one_sync(server.url, folder, shared, collections, docs)
                    counts[shared] = result[shared][2]
                sync.add(result[True][0] * 1000, result[False][0] * 1000)
                cpu.add(result[True][1] * 1000, result[False][1] * 1000)
    print(machine_line())
    print_table(
        f"{collections} collections x {docs} documents between two databases in one topic",
        [sync, cpu],
        rounds,
        notes=[
            f"peer connections per database: shared {counts.get(True)}, "
            f"one per collection {counts.get(False)}",
            f"engine: {os.environ.get('P2PDB_WEBRTC_ENGINE') or 'aiortc'}",
        ],
    )


if __name__ == "__main__":
    asyncio.run(main())
