"""Issue 12's storage figures in one run: median [range] of same-round ratios.

    python benchmarks/bench_storage.py [--rounds 3] [--size 100000] [--only bulk,sync,size]
        [--batch 100]

Per round, each on fresh files (the machine is shared: every ratio is taken within one
round, wall clock and process CPU both; CPU counts both threads and is less sensitive to
other load):

* ``bulk``: ``bulk_insert`` of 10,000 ~1 KB documents / stdlib ``sqlite3`` ``executemany``
  of the same documents as pre-serialized ``(id, body)`` rows (bench_core's baseline);
  target >= 0.4.
* ``sync``: the in-process pull and push of the same 10,000 documents
  (``collection_handler``, ``batch_size`` from ``--batch``, default 100) / ``bulk_insert``
  of them (bench_replication's figures; the baseline is the mean of a ``bulk_insert``
  before and after the round's replications); target >= 0.6.
* ``size``: the fork's file / the master's after an empty fork pulled ``--size`` documents
  (default 100,000; both closed, WAL folded in); target <= 1.2. Deterministic up to page
  packing, so it runs in the first round only unless ``--size-every-round`` is given.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from typing import Any

from _common import (
    SCHEMA,
    Timer,
    machine_line,
    make_docs,
    only_from_argv,
    rounds_from_argv,
    temp_dir,
    wanted,
)
from bench_core import raw_open
from bench_replication import DOCS, baseline, replicate_once, sizes_after_pull

import p2pdb


def _arg(name: str, default: int) -> int:
    return int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}-{max(values):.3f}]"


async def timed_bulk(path: str, docs: list[dict[str, Any]]) -> tuple[float, float]:
    """Wall and process CPU seconds of one ``bulk_insert`` into a fresh file."""
    db = await p2pdb.create_database(path)
    col = await db.add_collection("docs", SCHEMA)
    cpu = time.process_time()
    with Timer() as t:
        result = await col.bulk_insert(docs)
    cpu = time.process_time() - cpu
    assert not result.errors
    await db.close()
    return t.seconds, cpu


def timed_raw(path: str, docs: list[dict[str, Any]]) -> tuple[float, float]:
    """Wall and CPU seconds of bench_core's baseline: executemany of pre-serialized rows."""
    conn = raw_open(path)
    rows = [(d["id"], json.dumps(d)) for d in docs]
    cpu = time.process_time()
    with Timer() as t:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO t (id, body) VALUES (?, ?)", rows)
        conn.execute("COMMIT")
    cpu = time.process_time() - cpu
    conn.close()
    return t.seconds, cpu


async def main() -> int:
    rounds = rounds_from_argv(3)
    only = only_from_argv()
    batch = _arg("--batch", 100)
    size_docs = _arg("--size", 100_000)
    docs = make_docs(DOCS)
    ratios: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        ratios.setdefault(name, []).append(value)

    for r in range(rounds):
        with temp_dir() as tmp:
            if wanted(only, "bulk"):
                # alternate the order so neither side always runs on a warmer machine
                for first in (0, 1) if r % 2 == 0 else (1, 0):
                    if first == 0:
                        raw, raw_cpu = timed_raw(os.path.join(tmp, f"raw{r}.db"), docs)
                    else:
                        mine, mine_cpu = await timed_bulk(os.path.join(tmp, f"p2p{r}.db"), docs)
                add("bulk_insert / executemany, wall", raw / mine)
                add("bulk_insert / executemany, CPU", raw_cpu / mine_cpu)
            if wanted(only, "sync"):
                base_s, base_c = await baseline(tmp, f"{r}a", docs)
                got = {}
                for direction in ("pull", "push"):
                    got[direction] = await replicate_once(
                        tmp, f"{r}{direction}", docs, direction, batch
                    )
                again_s, again_c = await baseline(tmp, f"{r}b", docs)
                base_s, base_c = (base_s + again_s) / 2, (base_c + again_c) / 2
                for direction, (seconds, cpu_s) in got.items():
                    add(f"{direction} batch {batch} / bulk_insert, wall", base_s / seconds)
                    add(f"{direction} batch {batch} / bulk_insert, CPU", base_c / cpu_s)
            if wanted(only, "size") and size_docs and (r == 0 or "--size-every-round" in sys.argv):
                fork, master = await sizes_after_pull(tmp, str(r), make_docs(size_docs))
                add(f"fork file / master file after pulling {size_docs:,} docs", fork / master)
                mb = 1024 * 1024
                print(f"  round {r}: fork {fork / mb:.1f} MB, master {master / mb:.1f} MB")
            print(f"  round {r} done, load average {os.getloadavg()[0]:.1f}", flush=True)
    print(f"bench_storage: {machine_line()}")
    print(f"Issue 12 storage figures, median [range] over {rounds} rounds:")
    for name, values in ratios.items():
        print(f"  {name}: {_summary(values)}  (rounds: {', '.join(f'{v:.3f}' for v in values)})")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
