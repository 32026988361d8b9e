"""A/B of the optimization sketches in _prototypes.py, interleaved in one process.

    python benchmarks/ab_prototypes.py bulk base tailer+put+emit all
    python benchmarks/ab_prototypes.py find_one base compile
    python benchmarks/ab_prototypes.py query base compile
    python benchmarks/ab_prototypes.py live base live reader all
    python benchmarks/ab_prototypes.py pull base tailer+put+emit
    python benchmarks/ab_prototypes.py push base tailer+put+emit   [--rounds 5]

Each round runs every variant once (order reversed every other round) with only that
variant's patches applied, so a noisy machine affects all variants alike. Prints the median
per variant and its ratio to the first variant (``base`` = p2pdb as it is).
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import _prototypes
import bench_changes
import bench_core
import bench_replication
from _common import N_MAX, SCHEMA, make_docs, median, rounds_from_argv, temp_dir

import p2pdb

Scenario = Callable[[str, list[dict[str, Any]]], Awaitable[tuple[float, str]]]


async def bulk(tmp: str, docs: list[dict[str, Any]]) -> tuple[float, str]:
    seconds = await bench_core.p2pdb_bulk(os.path.join(tmp, "bulk.db"), docs)
    return len(docs) / seconds, "docs/s (bulk_insert 10k)"


async def _reads(tmp: str, docs: list[dict[str, Any]], kind: str) -> tuple[float, str]:
    db = await p2pdb.create_database(os.path.join(tmp, "read.db"))
    col = await db.add_collection("docs", SCHEMA)
    await col.bulk_insert(docs)
    rng = random.Random(5)
    if kind == "find_one":
        n = 10_000
        seconds = await bench_core.p2pdb_find_one(col, rng.choices([d["id"] for d in docs], k=n))
    else:
        n = 2_000
        seconds = await bench_core.p2pdb_query(col, [rng.randrange(N_MAX) for _ in range(n)])
    await db.close()
    unit = "find_one(id)/s" if kind == "find_one" else "find n>X sort n limit 10 /s"
    return n / seconds, unit


async def find_one(tmp: str, docs: list[dict[str, Any]]) -> tuple[float, str]:
    return await _reads(tmp, docs, "find_one")


async def query(tmp: str, docs: list[dict[str, Any]]) -> tuple[float, str]:
    return await _reads(tmp, docs, "query")


_EXPECTED: dict[int, list[list[str]]] = {}


async def live(tmp: str, docs: list[dict[str, Any]]) -> tuple[float, str]:
    batch_docs = docs[: bench_changes.BATCHED_DOCS]
    if not _EXPECTED:
        db = await p2pdb.create_database(os.path.join(tmp, "probe.db"))
        probe = await db.add_collection("docs", SCHEMA)
        _EXPECTED[0] = bench_changes.expected_results(probe, batch_docs)
        await db.close()
    _, settled, _ = await bench_changes.run_live(
        os.path.join(tmp, "live.db"), batch_docs, 10, bench_changes.BATCH, _EXPECTED[0]
    )
    return len(batch_docs) / settled, "docs/s (50 x bulk_insert(100), 10 live, settled)"


def replication(direction: str) -> Scenario:
    async def run(tmp: str, docs: list[dict[str, Any]]) -> tuple[float, str]:
        seconds = await bench_replication.replicate_once(tmp, direction, docs, direction, 100)
        return len(docs) / seconds, f"docs/s ({direction} 10k, batch_size 100)"

    return run


SCENARIOS: dict[str, Scenario] = {
    "bulk": bulk,
    "find_one": find_one,
    "query": query,
    "live": live,
    "pull": replication("pull"),
    "push": replication("push"),
}


async def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if "--rounds" in sys.argv:
        args.remove(sys.argv[sys.argv.index("--rounds") + 1])
    if len(args) < 2 or args[0] not in SCENARIOS:
        print(__doc__)
        return 2
    scenario = SCENARIOS[args[0]]
    variants = args[1:]
    rounds = rounds_from_argv(5)
    docs = make_docs(10_000)
    results: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    unit = ""
    for r in range(rounds):
        for variant in variants if r % 2 == 0 else variants[::-1]:
            _prototypes.restore()
            _prototypes.apply([] if variant == "base" else variant.split("+"))
            with temp_dir() as tmp:
                start = time.process_time()
                value, unit = await scenario(tmp, docs)
                cpu[variant].append(time.process_time() - start)
                results[variant].append(value)
    _prototypes.restore()
    first = median(results[variants[0]])
    print(f"{args[0]}: {unit}, median of {rounds} interleaved rounds")
    for v in variants:
        m = median(results[v])
        print(
            f"  {v:32s} {m:10,.0f}   x{m / first:.2f} vs {variants[0]}   "
            f"(process CPU {median(cpu[v]):.2f} s, setup included)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
