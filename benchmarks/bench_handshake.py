"""Connection set-up (and optionally sync throughput) with and without the p2pdb handshake.

    python benchmarks/bench_handshake.py [--rounds 20] [--docs 0]

Two p2pdb pools in this process, a signaling server on 127.0.0.1, aiortc on loopback. Each
round uses a new topic and new database files (their identities made before the clock
starts) and alternates ``authenticate=True`` and ``authenticate=False``, so both settings see
the same machine load. Set-up: from starting both ``replicate_webrtc`` calls until both pools
know their peer's role (token exchange, handshake, election done). With ``--docs N``: N
documents written on one side before joining, time until the other holds them all.
Prints medians and the ratio handshake / no handshake from the same run (target: set-up
within +20%, throughput unchanged within noise).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import p2pdb  # noqa: E402
from p2pdb.plugins.replication_webrtc import (  # noqa: E402
    aiortc_connection_handler,
    replicate_webrtc,
    start_signaling_server,
)

SCHEMA = {
    "version": 0,
    "primaryKey": "id",
    "type": "object",
    "properties": {"id": {"type": "string", "maxLength": 40}, "text": {"type": "string"}},
}


async def one_round(
    folder: Path, url: str, number: int, authenticate: bool, docs: int
) -> tuple[float, float | None]:
    dbs = [await p2pdb.create_database(folder / f"r{number}-{side}.db") for side in "ab"]
    try:
        cols = [await db.add_collection("docs", schema=SCHEMA) for db in dbs]
        assert all(db.identity for db in dbs)  # made when each file was created
        if docs:
            await cols[0].bulk_insert([{"id": f"d{i}", "text": "x" * 100} for i in range(docs)])
        handler = aiortc_connection_handler(url, ice_servers=[], host_addresses=["127.0.0.1"])
        topic = f"bench-handshake-{number}"
        start = time.perf_counter()
        pools = await asyncio.gather(
            *(replicate_webrtc(c, topic, handler, authenticate=authenticate) for c in cols)
        )
        await asyncio.gather(*(p.wait_for_first_peer() for p in pools))
        setup = time.perf_counter() - start
        synced = None
        if docs:
            while await cols[1].count() < docs:
                await pools[1].wait_for_change()
            synced = time.perf_counter() - start
        for pool in pools:
            await pool.cancel()
        return setup, synced
    finally:
        for db in dbs:
            await db.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--docs", type=int, default=0)
    args = parser.parse_args()
    results: dict[bool, list[tuple[float, float | None]]] = {True: [], False: []}
    async with await start_signaling_server(host="127.0.0.1", port=0) as server:
        with tempfile.TemporaryDirectory() as tmp:
            for number in range(2 * args.rounds):
                authenticate = number % 2 == 0
                result = await one_round(Path(tmp), server.url, number, authenticate, args.docs)
                results[authenticate].append(result)
    setup = {k: statistics.median(r[0] for r in v) for k, v in results.items()}
    print(f"set-up, median of {args.rounds} rounds each:")
    print(f"  without handshake {setup[False] * 1000:8.1f} ms")
    print(f"  with handshake    {setup[True] * 1000:8.1f} ms")
    print(f"  ratio             {setup[True] / setup[False]:8.2f}  (target <= 1.20)")
    if args.docs:
        sync = {k: statistics.median(r[1] or 0.0 for r in v) for k, v in results.items()}
        rate = {k: args.docs / t for k, t in sync.items()}
        print(f"{args.docs} documents, join to all held, median:")
        print(f"  without handshake {sync[False]:8.2f} s  {rate[False]:9.0f} docs/s")
        print(f"  with handshake    {sync[True]:8.2f} s  {rate[True]:9.0f} docs/s")
        print(f"  throughput ratio  {rate[True] / rate[False]:8.2f}  (target ~1.00)")


if __name__ == "__main__":
    asyncio.run(main())
