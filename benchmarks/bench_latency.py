"""Single-insert latency over WebRTC: when idle, and during a bulk sync, both directions.

    python benchmarks/bench_latency.py [--docs 10000] [--size 1000] [--samples 50]
                                       [--rounds 3] [--interval 0.05] [--code NAME=DIR ...]
                                       [--uvloop]

Two p2pdb peers, each its own OS process (``tests/webrtc/peer_process.py``), on loopback.
The writer A either leads the pair (``down``: master -> fork, its bulk goes out as stream
events of 200 documents) or is the fork (``up``: fork -> master, its bulk goes out as
``masterWrite`` batches of 100). Per round and direction:

* idle: ``--samples`` single inserts on A one after the other, each timed until B's change
  event (median), and the raw aiortc round trip of a small message measured just before
  (median of 100 ping-pongs, ``bench_webrtc.raw_baseline``): the ratio is the figure
  (target < 2x);
* during a sync: one ``bulk_insert`` of ``--docs`` documents of ``--size`` bytes on A, then
  a single insert every ``--interval`` s until B holds the bulk; the latencies of the inserts
  made before B held it (p50 and p99; target p99 < 100 ms). A round has ~20 of them, so its
  p99 is its slowest; the table adds p90 and p99 of all rounds' inserts pooled.

``--code NAME=DIR`` (repeatable) runs the same rounds with the peers on the p2pdb in ``DIR``
too (a checkout of another commit, e.g. ``git archive c38637f | tar -x -C DIR``),
interleaved round by round with this checkout (``this``), so every version shares the
machine's load. Figures are medians [range] over the rounds. ``--uvloop`` runs the peers and
the raw pair on uvloop (what ``p2pdb`` commands use where it installs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests" / "webrtc"))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from bench_webrtc import percentile, raw_baseline, token_of, work_folder  # noqa: E402

TOPIC = "p2pdb-bench-latency"


async def idle_latencies(a: Any, b: Any, samples: int) -> list[float]:
    """``samples`` inserts on A, one after the other; seconds until B saw each."""
    result = []
    for i in range(samples):
        doc_id = f"lat-idle-{i}"
        inserted = await a.request("insert_one", "inserted_one", id=doc_id)
        seen = await b.expect("seen", lambda e, d=doc_id: e["id"] == d + "000000")
        result.append(seen["t"] - inserted["t"])
    return result


async def sync_latencies(a: Any, b: Any, args: argparse.Namespace, held: int) -> list[float]:
    """A bulk insert on A, single inserts every ``interval`` until B holds the bulk; the
    latencies of those inserted before B held it."""
    n = args.docs
    await a.request("insert", "inserted", prefix="bulk-", count=n, size=args.size, within=120)
    reached = asyncio.ensure_future(
        b.request("wait_count", "reached", count=held + n, within=300, timeout=300)
    )
    start = len(a.events)
    ids = []
    while not reached.done() and len(ids) < 10_000:
        ids.append(f"lat-sync-{len(ids)}")
        a.send("insert_one", id=ids[-1])
        await asyncio.sleep(args.interval)  # the load's pacing, not a wait for a result
    held_at = (await reached)["t"]
    result = []
    for doc_id in ids:
        inserted = await a.expect(
            "inserted_one", lambda e, d=doc_id: e["id"] == d, after=start, within=120
        )
        seen = await b.expect("seen", lambda e, d=doc_id: e["id"] == d + "000000", within=120)
        if inserted["t"] < held_at:
            result.append(seen["t"] - inserted["t"])
    await b.request("wait_count", "reached", count=held + n + len(ids), within=300)
    return result


async def one_run(
    code: Path, writer_leads: bool, args: argparse.Namespace, url: str, folder: Path
) -> dict[str, list[float]]:
    from peer_process import ChildPeer

    from p2pdb.plugins.replication_webrtc import is_master

    folder = work_folder(str(folder))
    paths = [folder / "x.db", folder / "y.db"]
    tokens = [await token_of(p) for p in paths]
    x_leads = is_master(tokens[0], tokens[1])
    a_path, b_path = (paths[0], paths[1]) if x_leads == writer_leads else (paths[1], paths[0])
    os.environ["PYTHONPATH"] = str(code)  # the children's p2pdb
    extra = ["--batch-size", "100", "--watch-prefix", "lat-", *(["--uvloop"] * args.uvloop)]
    a = await ChildPeer.start(a_path, url, TOPIC, folder / "a.log", *extra)
    b = await ChildPeer.start(b_path, url, TOPIC, folder / "b.log", *extra)
    try:
        await b.expect("first_sync", within=60)
        await a.expect("first_sync", within=60)
        idle = await idle_latencies(a, b, args.samples)
        sync = await sync_latencies(a, b, args, args.samples)
    finally:
        await a.quit()
        await b.quit()
    return {"idle": idle, "sync": sync}


def spread(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    """``median [min-max]`` of ``values`` times ``scale``."""
    v = [x * scale for x in values]
    return f"{statistics.median(v):.{digits}f} [{min(v):.{digits}f}-{max(v):.{digits}f}]"


async def main(args: argparse.Namespace) -> None:
    from p2pdb.plugins.replication_webrtc import start_signaling_server

    codes = {name: Path(folder) for name, _, folder in (c.partition("=") for c in args.code)}
    codes["this"] = ROOT
    work = work_folder(args.workdir)
    print(f"# databases and child logs in {work}; load {os.getloadavg()}", flush=True)
    figures: dict[tuple[str, str], dict[str, list[float]]] = {}
    server = await start_signaling_server(port=0)
    try:
        for r in range(args.rounds):
            for name, code in codes.items():
                for direction, leads in (("down", True), ("up", False)):
                    os.environ["PYTHONPATH"] = str(ROOT)
                    # just before, on the same event loop as the peers
                    baseline = await raw_baseline(64 * 1024, rounds=1, uvloop=args.uvloop)
                    rtt = baseline["rtt_median"]
                    t0 = time.monotonic()
                    out = await one_run(
                        code, leads, args, server.url, work / f"{r}-{name}-{direction}"
                    )
                    idle, sync = statistics.median(out["idle"]), out["sync"]
                    row = figures.setdefault((name, direction), {})
                    row.setdefault("rtt", []).append(rtt)
                    row.setdefault("idle", []).append(idle)
                    row.setdefault("ratio", []).append(idle / rtt)
                    row.setdefault("p50", []).append(statistics.median(sync))
                    row.setdefault("p99", []).append(percentile(sync, 99))
                    row.setdefault("n", []).append(len(sync))
                    row.setdefault("all", []).extend(sync)
                    print(
                        f"# round {r} {name} {direction}: RTT {rtt * 1e3:.2f} ms, idle p50 "
                        f"{idle * 1e3:.2f} ms ({idle / rtt:.2f}x), during sync p50 "
                        f"{statistics.median(sync) * 1e3:.0f} ms p99 "
                        f"{percentile(sync, 99) * 1e3:.0f} ms over {len(sync)} inserts "
                        f"({time.monotonic() - t0:.0f} s)",
                        flush=True,
                    )
    finally:
        await server.close()
    print(f"\n# {args.docs} x {args.size} B, {args.rounds} rounds; load {os.getloadavg()}")
    print(
        "| code | direction | idle p50 / RTT | idle p50 (ms) | RTT (ms) | sync p50 (ms) "
        "| sync p99 (ms) | pooled p90 / p99 (ms) | inserts |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for (name, direction), row in figures.items():
        label = "master -> fork" if direction == "down" else "fork -> master"
        print(
            f"| {name} | {label} | {spread(row['ratio'], digits=2)} | "
            f"{spread(row['idle'], 1e3, 2)} | {spread(row['rtt'], 1e3, 2)} | "
            f"{spread(row['p50'], 1e3, 0)} | {spread(row['p99'], 1e3, 0)} | "
            f"{percentile(row['all'], 90) * 1e3:.0f} / {percentile(row['all'], 99) * 1e3:.0f} | "
            f"{sum(row['n']) // len(row['n'])} |"
        )
    print("targets: idle p50 < 2x RTT; p99 during a sync < 100 ms")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=50, help="idle single inserts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument(
        "--code", action="append", default=[], help="NAME=DIR: other p2pdb code to compare"
    )
    parser.add_argument("--workdir", help="folder for the databases and logs (kept)")
    parser.add_argument(
        "--uvloop", action="store_true", help="peers and the raw baseline on uvloop"
    )
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
