"""Redundant traffic in a full mesh, with the revs-diff extension and without (issue 13).

    python benchmarks/bench_mesh_traffic.py [--configs 2x3000,6x1000,2x1000] [--rounds 1]
                                            [--revs off,on] [--within 240]

Each config ``NxD`` starts ``N`` peer processes (``tests/webrtc/mesh_peer.py``: a SQLite
file, ``replicate_webrtc`` on loopback, a full mesh) on a fresh topic of one in-process
signaling server, waits until every peer is linked with every other and in sync with all
of them, then lets every peer write ``D`` documents at once (one bulk insert each) and
measures:

* **converged s**: from the writes until every peer holds every document (the last peer's
  last arrival, ``time.monotonic()`` read in the children: one clock for all processes);
* **in sync s**: from the writes until every peer's pool reports in sync with all others;
* **CPU s/peer**: the median peer's CPU seconds (user + system, ``/proc/<pid>/stat``) from
  the writes until in sync: on a shared machine a steadier figure than the times;
* **bodies/needed**: the document bodies every peer received over the wire after the writes
  (stubs not counted; read once all are in sync; the mesh was in sync before the writes)
  over the deliveries that were needed, ``N(N-1)D``
  (each peer getting each other peer's documents once): 1.0 is no redundant traffic.

``--revs off`` runs the children with ``P2PDB_REVS=0`` (the plain protocol: every relayed
state with its body), ``on`` with the extension (``p2pdb.replication.revs``); each round runs
every config in both modes, alternating, so both see the same machine. The table gives the
median and range over rounds, and the ratios the issue's targets are stated in: the same
mode's convergence time of a config over that of the first config (by default 2 peers
writing the same total as 6 peers writing 1,000 each), and
``on`` over ``off`` per config.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "webrtc"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from bench_mesh import spread, wait_reached  # noqa: E402
from mesh_peer import links_settle, start_mesh_peer  # noqa: E402
from peer_process import ChildPeer  # noqa: E402
from process_stats import cpu_seconds  # noqa: E402

FULL = 1000  # max_links: a full mesh


@dataclass
class Run:
    """One topic's figures."""

    config: str
    peers: int
    docs: int
    revs: str
    round: int
    converge_s: float | None
    sync_s: float | None
    bodies: int
    needed: int
    stubs: int = 0
    messages: int = 0
    cpu: float = 0.0  # CPU seconds per peer from the writes until in sync (median)

    @property
    def ratio(self) -> float:
        return self.bodies / self.needed if self.needed else 0.0


async def one_topic(
    url: str, folder: Path, peers_n: int, docs: int, revs: str, index: int, within: float
) -> Run:
    os.environ["P2PDB_REVS"] = "1" if revs == "on" else "0"  # the children inherit it
    topic = f"bench-traffic-{peers_n}x{docs}-{revs}-{index}"
    peers: list[ChildPeer] = []
    try:
        peers = list(
            await asyncio.gather(
                *(
                    start_mesh_peer(
                        folder / f"{topic}-{i}.db", url, topic, FULL, folder / f"{topic}-{i}.log"
                    )
                    for i in range(peers_n)
                )
            )
        )
        with contextlib.suppress(AssertionError):  # not formed in time: measure anyway
            await links_settle(peers, FULL, within=within)
        # every pair's roles settled and first pulls done: only the writes below are counted
        before = await asyncio.gather(*(in_sync(p, within) for p in peers))
        total = peers_n * docs
        cpu0 = [cpu_seconds(p.pid) for p in peers]
        start = time.monotonic()
        for i, peer in enumerate(peers):
            peer.send("insert", prefix=f"p{i:02d}-", count=docs)
        replies = await asyncio.gather(*(wait_reached(p, total, within) for p in peers))
        reached = [r for r in replies if r["event"] == "reached"]
        converge_s = (
            max(float(r["t"]) for r in reached) - start if len(reached) == peers_n else None
        )
        synced = await asyncio.gather(*(in_sync(p, within) for p in peers))
        cpu = statistics.median(cpu_seconds(p.pid) - c for p, c in zip(peers, cpu0, strict=True))
        done = [s for s in synced if s["event"] == "in_sync"]
        sync_s = max(float(s["t"]) for s in done) - start if len(done) == peers_n else None
        bodies = sum(int(s.get("bodies", 0)) for s in synced) - sum(
            int(s.get("bodies", 0)) for s in before
        )
        def delta(key: str) -> int:
            return sum(int(s.get(key, 0)) for s in synced) - sum(int(s.get(key, 0)) for s in before)

        return Run(
            f"{peers_n}x{docs}",
            peers_n,
            docs,
            revs,
            index,
            converge_s,
            sync_s,
            bodies,
            peers_n * (peers_n - 1) * docs,
            delta("stubs"),
            delta("messages"),
            cpu,
        )
    finally:
        await asyncio.gather(*(p.quit(within=10) for p in peers), return_exceptions=True)


async def in_sync(peer: ChildPeer, within: float) -> dict[str, object]:
    """The child's ``in_sync`` answer (its time and bodies), or ``sync_timeout``."""
    after = len(peer.events)
    peer.send("in_sync", timeout=within)
    try:
        return await peer.expect("in_sync", within=within + 10, after=after)
    except AssertionError:
        late = [e for e in peer.events[after:] if e["event"] == "sync_timeout"]
        return late[0] if late else {"event": "lost", "bodies": 0}


def report(runs: list[Run], args: argparse.Namespace) -> None:
    print(f"\nfull mesh, {args.rounds} round(s), bound {args.within:g} s, load: {load()}\n")
    print(
        "| config (peers x docs each) | revs | converged s | in sync s | bodies/needed "
        f"| converged / {args.configs[0]} | on / off | CPU s/peer |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for config in args.configs:
        for revs in args.revs:
            mine = [r for r in runs if r.config == config and r.revs == revs]
            if not mine:
                continue
            conv = [r.converge_s for r in mine if r.converge_s is not None]
            sync = [r.sync_s for r in mine if r.sync_s is not None]
            base = {
                r.round: r.converge_s
                for r in runs
                if r.config == args.configs[0] and r.revs == revs and r.converge_s
            }
            off = {
                r.round: r.converge_s
                for r in runs
                if r.config == config and r.revs == "off" and r.converge_s
            }
            scale = [r.converge_s / b for r in mine if r.converge_s and (b := base.get(r.round))]
            gain = [
                r.converge_s / o
                for r in mine
                if revs == "on" and r.converge_s and (o := off.get(r.round))
            ]
            print(
                f"| {config} | {revs} | {spread(conv, 2) if len(conv) == len(mine) else 'timeout'} "
                f"| {spread(sync, 2) if len(sync) == len(mine) else 'timeout'} "
                f"| {spread([r.ratio for r in mine], 2)} | {spread(scale, 2) if scale else '-'} "
                f"| {spread(gain, 2) if gain else '-'} | {spread([r.cpu for r in mine], 2)} |"
            )


def load() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()
    return "?"


async def main(args: argparse.Namespace) -> None:
    from p2pdb.plugins.replication_webrtc import start_signaling_server

    folder = Path(tempfile.mkdtemp(prefix="bench-mesh-traffic-"))
    runs: list[Run] = []
    print(f"load before: {load()}", flush=True)
    async with await start_signaling_server(port=0) as server:
        for r in range(args.rounds):
            for config in args.configs:
                peers_n, docs = (int(x) for x in config.split("x"))
                for revs in args.revs if r % 2 == 0 else list(reversed(args.revs)):
                    run = await one_topic(server.url, folder, peers_n, docs, revs, r, args.within)
                    print(run, f"ratio {run.ratio:.2f}", flush=True)
                    runs.append(run)
    report(runs, args)
    print(f"\nlogs and files: {folder}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="2x3000,6x1000,2x1000", help="peers x docs each")
    parser.add_argument("--revs", default="off,on", help="modes: off (P2PDB_REVS=0), on")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--within", type=float, default=240.0, help="bound per topic, s")
    args = parser.parse_args()
    args.configs = args.configs.split(",")
    args.revs = args.revs.split(",")
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
