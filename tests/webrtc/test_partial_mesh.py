"""A topic of 16 peer processes in a partial mesh of 4 links each (issue 13).

Real parts: a signaling server on 127.0.0.1, 16 OS processes (``mesh_peer.py``) with real
aiortc links on loopback and their own SQLite files. Every write must reach every peer over
several hops; then a third of the peers are killed with SIGKILL at random and the others must
re-link and converge on what they write next. Documents are few (5 per peer) so the test
measures the mesh, not the throughput of a loaded two-core machine.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest
from mesh_peer import links_settle, start_mesh_peer
from peer_process import ChildPeer

from p2pdb.plugins.replication_webrtc import ConnectionHandler
from p2pdb.plugins.replication_webrtc.link import LinkSettings
from p2pdb.plugins.replication_webrtc.mesh import mesh_graph
from p2pdb.plugins.replication_webrtc.signaling_server import SignalingServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PEERS = 16
MAX_LINKS = 4
DOCS = 5  # per peer and round
WITHIN = 120.0  # seconds for the whole topic to converge, per round


async def converge(peers: list[ChildPeer], total: int) -> None:
    replies = await asyncio.gather(
        *(
            p.request("wait_count", "reached", count=total, timeout=WITHIN, within=WITHIN + 10)
            for p in peers
        )
    )
    assert all(r["count"] == total for r in replies), replies


async def test_sixteen_peers_with_four_links_converge_and_survive_a_third_killed(
    tmp_path: Path, signaling: SignalingServer
) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    topic = f"mesh-{seed:08x}"
    peers: list[ChildPeer] = []
    try:
        peers = list(
            await asyncio.gather(
                *(
                    start_mesh_peer(
                        tmp_path / f"p{i}.db",
                        signaling.url,
                        topic,
                        MAX_LINKS,
                        tmp_path / f"p{i}.log",
                    )
                    for i in range(PEERS)
                )
            )
        )
        started = time.monotonic()
        for i, peer in enumerate(peers):
            peer.send("insert", prefix=f"a{i:02d}-", count=DOCS)
        await converge(peers, PEERS * DOCS)
        print(f"16 peers converged in {time.monotonic() - started:.1f} s (seed {seed})")
        await links_settle(peers, MAX_LINKS, within=60)

        killed = rng.sample(peers, PEERS // 3)
        await asyncio.gather(*(p.kill() for p in killed))
        alive = [p for p in peers if p not in killed]
        started = time.monotonic()
        for i, peer in enumerate(alive):
            peer.send("insert", prefix=f"b{i:02d}-", count=DOCS)
        await converge(alive, PEERS * DOCS + len(alive) * DOCS)
        print(f"{len(alive)} survivors converged in {time.monotonic() - started:.1f} s")
        # the survivors re-linked into the mesh of 11 (links to the dead dropped by the
        # heartbeat, new ones made, surplus ones closed once every wanted one was open)
        await links_settle(alive, MAX_LINKS, within=60)
    finally:
        await asyncio.gather(*(p.quit() for p in peers), return_exceptions=True)


async def test_handlers_link_as_the_mesh_says_and_follow_max_links(
    signaling: SignalingServer,
) -> None:
    """Four handlers in one process: ``max_links=2`` makes a ring (2 links each, not 3);
    raising it to 3 makes the full mesh; lowering it again drops the surplus links."""
    changed = asyncio.Event()
    settings = LinkSettings(host_addresses=("127.0.0.1",))
    handlers = [
        ConnectionHandler("mesh-handlers", signaling.url, settings, max_links=2) for _ in range(4)
    ]

    async def links_are(max_links: int) -> None:
        ids = [h.own_peer_id for h in handlers]
        assert all(ids)
        graph = mesh_graph([str(i) for i in ids], max_links)
        async with asyncio.timeout(30):
            while any(
                {p.peer_id for p in h.peers} != graph[str(h.own_peer_id)] for h in handlers
            ):
                changed.clear()
                await changed.wait()

    try:
        for handler in handlers:
            handler.connects.subscribe(lambda _p: changed.set())
            handler.disconnects.subscribe(lambda _p: changed.set())
            await handler.start(join_timeout=10)
        await links_are(2)
        assert all(len(h.peers) == 2 for h in handlers)  # a ring, not the full mesh of 3
        for handler in handlers:
            handler.set_max_links(3)
        await links_are(3)
        assert all(len(h.peers) == 3 for h in handlers)
        for handler in handlers:
            handler.set_max_links(2)
        await links_are(2)
    finally:
        await asyncio.gather(*(h.close() for h in handlers))
