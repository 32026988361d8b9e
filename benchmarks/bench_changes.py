"""Change streams: the cost of open live queries on writes, and cross-process event delay.

    python benchmarks/bench_changes.py [--rounds 3] [--only live,latency] [--writes 200]

Figures:

* ``bulk_insert``, 0 live queries: 10,000 ~1 KB documents in one ``bulk_insert`` into a
  fresh collection (the baseline of the next two lines).
* ``bulk_insert``, 10 live queries: the same with 10 live queries open (different
  selectors, ``limit=10``, subscribed with ``query.observe().subscribe(...)``), timed
  (a) until ``bulk_insert`` returns and (b) until every live query has also emitted its
  final result ("settled": the deferred re-runs are counted). The expected final results
  are computed beforehand in Python, so checking them costs nothing inside the window.
* The same with 5,000 documents written as 50 ``bulk_insert`` calls of 100 (many
  commits, so the live queries re-run while the writes go on); no target.
* Cross-process delay: a child process inserts ~200 documents one at a time, 2-18 ms
  apart, each holding ``time.time()`` taken just before its ``insert``; this process
  records ``time.time() - doc["t"]`` when ``collection.changes`` delivers it (so the
  child's own insert, ~1 ms, is included). Baseline:
  the same delay for inserts made by this process. Reference: the tailer polls every
  50 ms, so ~25 ms median is the expected floor of the polling design.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from typing import Any

from _common import (
    SCHEMA,
    Row,
    Timer,
    machine_line,
    make_docs,
    median,
    only_from_argv,
    percentile,
    print_table,
    rounds_from_argv,
    temp_dir,
    wanted,
)

import p2pdb

DOCS = 10_000
BATCHED_DOCS = 5_000
BATCH = 100

#: Ten live queries of different shapes (index range scans, filtered index scans, full scans
#: with a sort, array membership, a Python-only $regex, an $or, everything).
LIVE_QUERIES: list[tuple[dict[str, Any], list[dict[str, str]]]] = [
    ({"n": {"$gt": 500_000}}, [{"n": "asc"}]),
    ({"n": {"$lt": 1_000}}, [{"n": "desc"}]),
    ({"done": True}, [{"n": "asc"}]),
    ({"score": {"$gte": 0.9}}, [{"score": "desc"}]),
    ({"tags": "urgent"}, [{"n": "asc"}]),
    ({"category": "c3"}, [{"title": "asc"}]),
    ({"category": {"$in": ["c1", "c2"]}, "done": False}, [{"n": "desc"}]),
    ({"title": {"$regex": "^item 1"}}, [{"n": "asc"}]),
    ({"$or": [{"done": True}, {"n": {"$lt": 100_000}}]}, [{"n": "desc"}]),
    ({}, [{"n": "desc"}]),
]

SCRIPT = os.path.abspath(__file__)

LATENCY_SCHEMA: dict[str, Any] = {
    "version": 0,
    "primaryKey": "id",
    "type": "object",
    "properties": {
        "id": {"type": "string", "maxLength": 40},
        "t": {"type": "number"},
        "text": {"type": "string"},
    },
    "required": ["id", "t"],
}


# -- live queries ---------------------------------------------------------------------------


class LiveWatch:
    """Subscribes a live query and notes when it emits a result with the expected ids."""

    def __init__(
        self,
        query: p2pdb.Query[Any],
        expected: list[str],
        done: asyncio.Event,
        pending: set[int],
        index: int,
    ) -> None:
        self.expected = expected
        self.emissions = 0
        self.settled_at: float | None = None
        self._done, self._pending, self._index = done, pending, index
        self.initial = asyncio.Event()
        self.subscription = query.observe().subscribe(on_next=self._on_next)

    def _on_next(self, result: list[p2pdb.Document]) -> None:
        self.emissions += 1
        self.initial.set()
        if self.settled_at is None and [d.id for d in result] == self.expected:
            self.settled_at = time.perf_counter()
            self._pending.discard(self._index)
            if not self._pending:
                self._done.set()


def expected_results(col: p2pdb.Collection, docs: list[dict[str, Any]]) -> list[list[str]]:
    """The final ``limit=10`` result of each live query, computed in Python."""
    out = []
    for selector, sort in LIVE_QUERIES:
        compiled = col.find(selector, sort=sort, limit=10).compiled
        matching = sorted((d for d in docs if compiled.matches(d)), key=compiled.sort_key)
        out.append([d["id"] for d in matching[:10]])
    return out


async def insert_all(col: p2pdb.Collection, docs: list[dict[str, Any]], batch: int) -> None:
    for start in range(0, len(docs), batch):
        result = await col.bulk_insert(docs[start : start + batch])
        assert not result.errors, result.errors[:1]


async def run_live(
    path: str, docs: list[dict[str, Any]], live: int, batch: int, expected: list[list[str]] | None
) -> tuple[float, float, int]:
    """(seconds until the writes returned, seconds until every live query settled,
    total emissions)."""
    db = await p2pdb.create_database(path)
    col = await db.add_collection("docs", SCHEMA)
    done = asyncio.Event()
    pending = set(range(live))
    watches = []
    if live:
        assert expected is not None
        for i, (selector, sort) in enumerate(LIVE_QUERIES[:live]):
            q = col.find(selector, sort=sort, limit=10)
            watches.append(LiveWatch(q, expected[i], done, pending, i))
        async with asyncio.timeout(10):
            for w in watches:
                await w.initial.wait()
    start = time.perf_counter()
    await insert_all(col, docs, batch)
    wrote = time.perf_counter() - start
    if live:
        async with asyncio.timeout(60):
            await done.wait()
        settled = max(w.settled_at or 0.0 for w in watches) - start
    else:
        settled = wrote
    emissions = sum(w.emissions for w in watches)
    for w in watches:
        w.subscription.dispose()
    await db.close()
    return wrote, max(settled, wrote), emissions


# -- cross-process delay --------------------------------------------------------------------


async def child(path: str, writes: int) -> None:
    """Run in the child process: insert ``writes`` timestamped docs, spaced out."""
    rng = random.Random(3)
    db = await p2pdb.create_database(path)
    col = await db.add_collection("lat", LATENCY_SCHEMA)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for i in range(writes):
        await col.insert({"id": f"c{i}", "t": time.time(), "text": "x" * 200})
        await asyncio.sleep(rng.uniform(0.002, 0.018))
    await db.close()


async def run_latency(path: str, writes: int) -> tuple[list[float], list[float]]:
    """(delays of another process's commits, delays of this process's commits) in ms."""
    db = await p2pdb.create_database(path)
    col = await db.add_collection("lat", LATENCY_SCHEMA)
    delays: list[float] = []
    arrived = asyncio.Event()

    def on_event(event: p2pdb.ChangeEvent) -> None:
        delays.append((time.time() - event.document["t"]) * 1000)
        if len(delays) >= expected_count:
            arrived.set()

    col.changes.subscribe(on_next=on_event)

    # baseline: own writes, same spacing
    rng = random.Random(4)
    expected_count = writes
    for i in range(writes):
        await col.insert({"id": f"p{i}", "t": time.time(), "text": "x" * 200})
        await asyncio.sleep(rng.uniform(0.002, 0.018))
    async with asyncio.timeout(10):
        await arrived.wait()
    local, delays[:] = list(delays), []
    arrived.clear()

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        SCRIPT,
        "--child",
        path,
        str(writes),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdin is not None
    async with asyncio.timeout(30):
        line = await proc.stdout.readline()
    assert line.strip() == b"ready", line
    proc.stdin.write(b"go\n")
    await proc.stdin.drain()
    async with asyncio.timeout(60):
        await arrived.wait()
        await proc.wait()
    assert proc.returncode == 0
    await db.close()
    return delays, local


# -- main -----------------------------------------------------------------------------------


async def main() -> int:
    if "--child" in sys.argv:
        i = sys.argv.index("--child")
        await child(sys.argv[i + 1], int(sys.argv[i + 2]))
        return 0
    rounds = rounds_from_argv(3)
    only = only_from_argv()
    writes = int(sys.argv[sys.argv.index("--writes") + 1]) if "--writes" in sys.argv else 200
    docs = make_docs(DOCS)
    rows: list[Row] = []
    notes = [f"{DOCS:,} docs of ~1 KB per figure; {len(LIVE_QUERIES)} live queries, limit 10"]

    if wanted(only, "live"):
        base = Row("bulk_insert, 0 live queries", "docs/s")
        w10 = Row("bulk_insert, 10 live: until it returns", "docs/s", "0 live queries", 0.7)
        s10 = Row("bulk_insert, 10 live: until settled", "docs/s", "0 live queries", 0.7)
        b_base = Row("50 x bulk_insert(100), 0 live", "docs/s")
        b_w10 = Row("50 x bulk_insert(100), 10 live: returns", "docs/s", "0 live (50 x 100)")
        b_s10 = Row("50 x bulk_insert(100), 10 live: settled", "docs/s", "0 live (50 x 100)")
        emissions: list[int] = []
        batched_docs = docs[:BATCHED_DOCS]
        with temp_dir() as tmp:
            db = await p2pdb.create_database(os.path.join(tmp, "probe.db"))
            probe = await db.add_collection("docs", SCHEMA)
            expected = expected_results(probe, docs)
            expected_batched = expected_results(probe, batched_docs)
            await db.close()
        for r in range(rounds):
            with temp_dir() as tmp:
                order = (0, 10) if r % 2 == 0 else (10, 0)
                got: dict[int, tuple[float, float, int]] = {}
                for live in order:
                    got[live] = await run_live(
                        os.path.join(tmp, f"one{live}.db"), docs, live, DOCS, expected
                    )
                base.add(DOCS / got[0][0])
                w10.add(DOCS / got[10][0], DOCS / got[0][0])
                s10.add(DOCS / got[10][1], DOCS / got[0][0])
                for live in order:
                    got[live] = await run_live(
                        os.path.join(tmp, f"many{live}.db"),
                        batched_docs,
                        live,
                        BATCH,
                        expected_batched,
                    )
                n = BATCHED_DOCS
                b_base.add(n / got[0][0])
                b_w10.add(n / got[10][0], n / got[0][0])
                b_s10.add(n / got[10][1], n / got[0][0])
                emissions.append(got[10][2])
        rows += [base, w10, s10, b_base, b_w10, b_s10]
        notes.append(
            f"50 x 100 run: {median(emissions):.0f} live-query emissions in total (median)"
        )

    if wanted(only, "latency"):
        with temp_dir() as tmp:
            with Timer() as t:
                foreign, local = await run_latency(os.path.join(tmp, "lat.db"), writes)
        med = Row("cross-process commit -> event, median", "ms", "same-process, median")
        p99 = Row("cross-process commit -> event, p99", "ms", "same-process, p99")
        med.higher_is_better = p99.higher_is_better = False
        med.add(median(foreign), median(local))
        p99.add(percentile(foreign, 99), percentile(local, 99))
        mx = Row("cross-process commit -> event, max", "ms")
        mx.add(max(foreign))
        rows += [med, p99, mx]
        notes.append(
            f"latency: {len(foreign)} writes from a child process (one pass, {t.seconds:.1f} s); "
            "the tailer polls every 50 ms; ratio = same-process delay / cross-process delay"
        )

    print(f"bench_changes: {machine_line()}")
    print_table("Change streams", rows, rounds, notes)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
