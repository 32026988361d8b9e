"""Convergence of a topic of many peer processes: full mesh against partial mesh (issue 13).

    python benchmarks/bench_mesh.py [--peers 2,4,8,16] [--docs 500] [--max-links 4]
                                    [--modes full,partial] [--rounds 1] [--within 240]

Per topic size and mode, in each round: start that many peer processes
(``tests/webrtc/mesh_peer.py``: a SQLite file, ``replicate_webrtc`` on loopback) on a fresh
topic of one in-process signaling server, wait until every peer is linked exactly as the mesh
says (``full``: every other peer; ``partial``: the graph of ``mesh.py`` with ``--max-links``),
then let every peer write ``--docs`` documents at once (one bulk insert each) and measure:

* the time from the writes until every peer holds every document (the last peer's last
  arrival, ``time.monotonic()`` read in the children: one clock for all processes);
* CPU seconds per peer spent meanwhile (``/proc/<pid>/stat``), and RSS per peer at the end
  (``VmRSS`` of ``/proc/<pid>/status``): median and max over the peers;
* the links per peer and the time the mesh took to form.

A topic that does not converge within ``--within`` seconds is reported with how many
documents its slowest peer held. With ``--rounds`` > 1 the figures are medians over rounds
with their range. The ratio column is the partial mesh's time over the full mesh's of the same
round (median and range of the per-round ratios), per size.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "webrtc"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from mesh_peer import links_settle, start_mesh_peer  # noqa: E402 (after the path)
from peer_process import ChildPeer, Event  # noqa: E402
from process_stats import cpu_seconds, rss_mb  # noqa: E402

FULL = 1000  # max_links for a full mesh of any size measured here


@dataclass
class Run:
    """One topic's figures."""

    peers: int
    mode: str
    round: int
    form_s: float  # until every peer was linked as the mesh says
    converge_s: float | None  # None: not within the bound
    slowest_count: int
    cpu_median: float
    cpu_max: float
    rss_median: float
    rss_max: float
    links_mean: float


async def one_topic(
    url: str, folder: Path, peers_n: int, mode: str, args: argparse.Namespace, index: int
) -> Run:

    max_links = FULL if mode == "full" else args.max_links
    topic = f"bench-mesh-{mode}-{peers_n}-{index}"
    peers: list[ChildPeer] = []
    try:
        t0 = time.monotonic()
        peers = list(
            await asyncio.gather(
                *(
                    start_mesh_peer(
                        folder / f"{topic}-{i}.db",
                        url,
                        topic,
                        max_links,
                        folder / f"{topic}-{i}.log",
                    )
                    for i in range(peers_n)
                )
            )
        )
        with contextlib.suppress(AssertionError):  # not formed in time: measure anyway
            await links_settle(peers, max_links, within=args.within)
        form_s = time.monotonic() - t0
        links = [
            len([e for e in p.events if e["event"] == "peers"][-1:][0]["ids"])
            if any(e["event"] == "peers" for e in p.events)
            else 0
            for p in peers
        ]
        cpu0 = [cpu_seconds(p.pid) for p in peers]
        total = peers_n * args.docs
        start = time.monotonic()
        for i, peer in enumerate(peers):
            peer.send("insert", prefix=f"p{i:02d}-", count=args.docs)
        replies = await asyncio.gather(*(wait_reached(p, total, args.within) for p in peers))
        reached = [r for r in replies if r["event"] == "reached"]
        converge_s = (
            max(float(r["t"]) for r in reached) - start if len(reached) == peers_n else None
        )
        counts = [int(r["count"]) for r in replies]
        cpu = [cpu_seconds(p.pid) - c for p, c in zip(peers, cpu0, strict=True)]
        rss = [rss_mb(p.pid) for p in peers]
        return Run(
            peers_n,
            mode,
            index,
            form_s,
            converge_s,
            min(counts),
            statistics.median(cpu),
            max(cpu),
            statistics.median(rss),
            max(rss),
            statistics.mean(links),
        )
    finally:
        await asyncio.gather(*(p.quit(within=10) for p in peers), return_exceptions=True)


async def wait_reached(peer: ChildPeer, total: int, within: float) -> Event:
    """The child's ``reached`` answer to ``wait_count``, or its ``wait_timeout`` (with the
    count it held) when the bound passed."""
    after = len(peer.events)
    peer.send("wait_count", count=total, timeout=within)
    try:
        return await peer.expect("reached", within=within + 10, after=after)
    except AssertionError:
        late = [e for e in peer.events[after:] if e["event"] == "wait_timeout"]
        return late[0] if late else {"event": "lost", "count": 0}


def spread(values: list[float], digits: int = 1) -> str:
    """The median, and the range over rounds when there are several."""
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def report(runs: list[Run], args: argparse.Namespace) -> None:
    print(
        f"\n{args.docs} documents per peer, partial mesh max_links={args.max_links}, "
        f"{args.rounds} round(s), bound {args.within:g} s\n"
    )
    print(
        "| peers | mesh | links/peer | mesh formed s | converged s | partial/full "
        "| CPU s/peer (median, max) | RSS MB/peer (median, max) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    sizes = sorted({r.peers for r in runs})
    for n in sizes:
        full = {r.round: r.converge_s for r in runs if r.peers == n and r.mode == "full"}
        for mode in args.modes:
            mine = [r for r in runs if r.peers == n and r.mode == mode]
            if not mine:
                continue
            done = [r.converge_s for r in mine if r.converge_s is not None]
            conv = spread(done, 2) if len(done) == len(mine) else (
                f"> {args.within:g} (slowest held {min(r.slowest_count for r in mine)}"
                f" of {n * args.docs})"
            )
            ratios = [
                r.converge_s / f
                for r in mine
                if mode == "partial" and r.converge_s and (f := full.get(r.round))
            ]
            ratio = spread(ratios, 2) if ratios else "-"
            print(
                f"| {n} | {mode} | {statistics.mean(r.links_mean for r in mine):.1f} "
                f"| {spread([r.form_s for r in mine])} | {conv} | {ratio} "
                f"| {spread([r.cpu_median for r in mine], 2)}, "
                f"{spread([r.cpu_max for r in mine], 2)} "
                f"| {spread([r.rss_median for r in mine])}, {spread([r.rss_max for r in mine])} |"
            )


async def main(args: argparse.Namespace) -> None:
    from p2pdb.plugins.replication_webrtc import start_signaling_server

    folder = Path(tempfile.mkdtemp(prefix="bench-mesh-"))
    runs: list[Run] = []
    async with await start_signaling_server(port=0) as server:
        for n in args.peers:
            for r in range(args.rounds):
                for mode in args.modes:
                    run = await one_topic(server.url, folder, n, mode, args, r)
                    print(run, flush=True)
                    runs.append(run)
    report(runs, args)
    print(f"\nlogs and files: {folder}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", default="2,4,8,16", help="topic sizes, e.g. 2,4,8,16,32")
    parser.add_argument("--docs", type=int, default=500, help="documents written per peer")
    parser.add_argument("--max-links", type=int, default=4, help="the partial mesh's bound")
    parser.add_argument("--modes", default="full,partial")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--within", type=float, default=240.0, help="bound per topic, s")
    args = parser.parse_args()
    args.peers = [int(n) for n in args.peers.split(",")]
    args.modes = args.modes.split(",")
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
