"""Faults with real parts: a peer process killed with SIGKILL mid-sync and restarted, and the
signaling server restarted under working peers.

Everything is real: the signaling server over WebSockets on 127.0.0.1, aiortc connections on
loopback, SQLite files, and (for the killed peer) a separate OS process running
``peer_process.py``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from peer_process import DOCS_SCHEMA, ChildPeer, make_docs
from replication_helpers import contents, wait_equal

import p2pdb
from p2pdb.plugins.replication_webrtc import (
    Peer,
    ReplicationPool,
    aiortc_connection_handler,
    is_master,
    replicate_webrtc,
    start_signaling_server,
)
from p2pdb.plugins.replication_webrtc.signaling_server import SignalingServer

pytestmark = pytest.mark.slow

TOPIC = "p2pdb-faults-room"
DOCS = 4000  # documents the killed peer is pulling when it dies
BATCH = 100  # the pools' batch_size (the default)
HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT = 1.0, 4.0  # the pool defaults, named for the bound
DETECTION_BOUND = 2 * HEARTBEAT_INTERVAL + HEARTBEAT_TIMEOUT + 0.5


class Node:
    """An in-process peer: database, collection, pool, and a record of its peer sets."""

    def __init__(self, db: p2pdb.Database, docs: p2pdb.Collection, pool: ReplicationPool):
        self.db, self.docs, self.pool = db, docs, pool
        self.peer_sets: list[tuple[float, frozenset[Peer]]] = []
        self.errors: list[Exception] = []
        self._changed = asyncio.Event()
        pool.peers.subscribe(self._on_peers)
        pool.errors.subscribe(self._on_error)

    def _on_peers(self, peers: frozenset[Peer]) -> None:
        self.peer_sets.append((time.monotonic(), peers))
        self._changed.set()

    def _on_error(self, error: Exception) -> None:
        self.errors.append(error)
        self._changed.set()

    def peer_with_token(self, token: str) -> Peer | None:
        for peer, session in self.pool.sessions.items():
            if session.token == token:
                return peer
        return None

    async def wait(self, condition: Callable[[], Any], within: float, what: str) -> Any:
        """Wait (on pool events, with a timeout) until ``condition()`` is truthy."""
        try:
            async with asyncio.timeout(within):
                while not (result := condition()):
                    self._changed.clear()
                    waiter = asyncio.ensure_future(self._changed.wait())
                    change = asyncio.ensure_future(self.pool.wait_for_change())
                    _, pending = await asyncio.wait(
                        [waiter, change], return_when=asyncio.FIRST_COMPLETED
                    )
                    for task in pending:
                        task.cancel()
                return result
        except TimeoutError:
            raise AssertionError(f"{what}: not within {within} s") from None


MakeNode = Callable[..., Any]


@pytest.fixture
async def make_node(tmp_path: Path) -> AsyncIterator[MakeNode]:
    """``await make_node(name, signaling_url, **pool_options)``: an in-process peer."""
    nodes: list[Node] = []

    async def make(name: str, url: str, **options: Any) -> Node:
        db = await p2pdb.create_database(str(tmp_path / f"{name}.db"))
        docs = await db.add_collection("docs", schema=DOCS_SCHEMA)
        handler = aiortc_connection_handler(url, ice_servers=[], host_addresses=["127.0.0.1"])
        pool = await replicate_webrtc(docs, TOPIC, handler, **options)
        node = Node(db, docs, pool)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        await node.pool.cancel()
        await node.db.close()


def dropped_after(node: Node, peer: Peer, since: float) -> float:
    """Seconds from ``since`` until ``node.pool.peers`` first emitted a set without ``peer``."""
    return next(t for t, peers in node.peer_sets if t >= since and peer not in peers) - since


async def token_of(path: Path) -> str:
    async with p2pdb.create_database(str(path)) as db:
        return db.token


async def fork_database(tmp_path: Path, *master_tokens: str) -> tuple[Path, str]:
    """A new database file whose token makes it the fork of every given token, so the
    checkpoints of its replications live in its own file."""
    for attempt in range(64):
        path = tmp_path / f"killed-{attempt}.db"
        token = await token_of(path)
        if not any(is_master(token, other) for other in master_tokens):
            return path, token
    raise AssertionError("no fork token in 64 tries (odds 1 in 2**128)")


async def test_killed_peer_is_dropped_the_rest_go_on_and_it_resumes(
    tmp_path: Path, signaling: SignalingServer, make_node: MakeNode
) -> None:
    b = await make_node("b", signaling.url)
    c = await make_node("c", signaling.url)
    await b.docs.bulk_insert(make_docs("doc-", DOCS, size=300))
    await wait_equal(b.docs, c.docs, seconds=30)

    a_path, a_token = await fork_database(tmp_path, b.db.token, c.db.token)
    child_args = ("--progress-step", "200")
    a = await ChildPeer.start(a_path, signaling.url, TOPIC, tmp_path / "a.log", *child_args)
    try:
        # Kill it in the middle of its pulls (it asks both b and c for their 4000 docs).
        progress = await a.expect("progress", lambda e: e["count"] >= DOCS // 2, within=60)
        peer_in_b = b.peer_with_token(a_token)
        peer_in_c = c.peer_with_token(a_token)
        assert peer_in_b is not None and peer_in_c is not None
        await a.kill()
        killed_at = time.monotonic()

        # The others keep replicating with each other while the dead peer is still listed.
        await c.docs.insert({"id": "after-kill", "text": "written by c after the kill"})
        await b.wait(
            lambda: "after-kill" in b.db.storage.get("docs", ["after-kill"]),
            10,
            "c's write reaches b",
        )
        reached_b_at = time.monotonic()

        # Heartbeats detect the dead peer: the pools' peer sets drop it.
        detected: list[float] = []
        for node, peer in ((b, peer_in_b), (c, peer_in_c)):
            await node.wait(
                lambda node=node, peer=peer: peer not in node.pool.sessions,
                DETECTION_BOUND + 5,
                "the killed peer is dropped",
            )
            detected.append(dropped_after(node, peer, killed_at))
            codes = [getattr(e, "code", None) for e in node.errors]
            assert "WEBRTC_PEER_TIMEOUT" in codes, codes
        assert max(detected) < DETECTION_BOUND, detected
        print(f"dead peer dropped after {detected} s; c->b took {reached_b_at - killed_at:.2f} s")
        await wait_equal(b.docs, c.docs)

        # What the killed process had stored, and how far its checkpoints got.
        remaining: dict[str, int] = {}
        moved: dict[str, int] = {}  # documents each master's down-checkpoint got past
        async with p2pdb.create_database(str(a_path)) as killed_db:
            killed_docs = await killed_db.add_collection("docs", schema=DOCS_SCHEMA)
            stored = await killed_docs.count()
            storage = killed_db.storage
            for node in (b, c):
                key = node.db.identity.public_key_text  # peers proved their keys
                replication_id = f"{TOPIC}||{key}||{node.db.token}"
                down = storage.get_checkpoint("docs", replication_id, "down") or {"seq": 0}
                master_storage = node.db.storage
                after, _ = master_storage.changes_since("docs", down["seq"], 10**9)
                total, _ = master_storage.changes_since("docs", 0, 10**9)
                remaining[node.db.token] = len(after)
                moved[node.db.token] = len(total) - len(after)
        # the kill fell mid-sync, and the check below can tell a resume from a restart for
        # at least one master (the two pulls share the fork's writer: one may lead by far)
        assert max(moved.values()) > 2 * BATCH, moved
        assert progress["count"] <= stored < DOCS, (progress, stored)

        # Restart on the same file: it resumes from its checkpoints and converges.
        a = await ChildPeer.start(a_path, signaling.url, TOPIC, tmp_path / "a2.log", *child_args)
        await a.request("wait_count", "reached", count=DOCS + 1, within=60)
        await a.request("in_sync", "in_sync", within=30)
        stats = await a.request("stats", "stats")
        for token, left in remaining.items():
            pulled = stats["pulled"].get(token, 0)
            # A restart from scratch would pull all DOCS + 1 again from each master.
            assert pulled <= left + 2 * BATCH, (token, pulled, left, stats)
            if moved[token] > 2 * BATCH:  # (a master the kill left nearly unpulled tells nothing)
                assert pulled < DOCS - BATCH, (token, pulled, stats)
        print(f"stored at kill {stored}, remaining {remaining}, pulled after restart {stats}")
        await a.quit()
    finally:
        await a.kill()

    async with p2pdb.create_database(str(a_path)) as restarted:
        docs = await restarted.add_collection("docs", schema=DOCS_SCHEMA)
        assert await contents(docs) == await contents(b.docs) == await contents(c.docs)
        assert len(await contents(docs)) == DOCS + 1


async def test_signaling_restart_keeps_links_and_lets_new_peers_in(
    make_node: MakeNode,
) -> None:
    first = await start_signaling_server(port=0)
    port = first.port
    url = first.url
    second: SignalingServer | None = None
    try:
        a = await make_node("a", url)
        b = await make_node("b", url)
        await a.docs.insert({"id": "before", "text": "before the outage"})
        await wait_equal(a.docs, b.docs)
        link_a = await a.wait(lambda: a.peer_with_token(b.db.token), 10, "a knows b")

        await first.close()  # the outage: every signaling socket drops
        await a.wait(lambda: a.pool.connection.own_peer_id is None, 10, "a notices the outage")
        await b.wait(lambda: b.pool.connection.own_peer_id is None, 10, "b notices the outage")

        # The data channel does not need the signaling server: writes still flow both ways.
        await a.docs.bulk_insert(make_docs("outage-a-", 200))
        await b.docs.insert({"id": "outage-b", "text": "written by b during the outage"})
        await wait_equal(a.docs, b.docs)
        assert a.peer_with_token(b.db.token) == link_a  # the same link, never dropped
        assert len(await contents(a.docs)) == 202

        second = await start_signaling_server(port=port)  # same port, a new server
        restarted_at = time.monotonic()

        def both_in_room() -> bool:
            assert second is not None
            members = second.rooms().get(TOPIC, [])
            return len(members) == 2 and all(
                n.pool.connection.own_peer_id in members for n in (a, b)
            )

        # The clients reconnect with backoff (0.5 s doubling, jittered, capped at 15 s).
        await a.wait(both_in_room, 20, "a and b rejoin the restarted server")
        print(f"rejoined {time.monotonic() - restarted_at:.2f} s after the restart")

        c = await make_node("c", url)
        await c.docs.insert({"id": "late", "text": "from the new peer"})
        await wait_equal(a.docs, b.docs, c.docs, seconds=30)
        assert len(await contents(c.docs)) == 203
        # a and b still replicate with each other (over the old link or its replacement)
        await a.docs.insert({"id": "after", "text": "after the restart"})
        await wait_equal(a.docs, b.docs, c.docs)
        assert {e.code for e in a.errors if hasattr(e, "code")} <= {
            "WEBRTC_PEER_GONE",
            "WEBRTC_REQUEST_TIMEOUT",
        }, a.errors
    finally:
        await first.close()
        if second is not None:
            await second.close()


DOCS_10K = make_docs("big-", 10000)


async def test_a_long_transfer_is_not_mistaken_for_a_dead_peer(
    signaling: SignalingServer, make_node: MakeNode
) -> None:
    """A master's change event for a big bulk insert is one large message, which takes
    seconds to send. Heartbeats travel ahead of it, so with a heartbeat timeout much shorter
    than the transfer the fork neither times out nor drops the link."""
    options = {"heartbeat_interval": 0.25, "heartbeat_timeout": 1.5}
    x = await make_node("x", signaling.url, **options)
    y = await make_node("y", signaling.url, **options)
    master, fork = (x, y) if is_master(x.db.token, y.db.token) else (y, x)
    link = await fork.wait(lambda: fork.peer_with_token(master.db.token), 10, "connected")
    await fork.wait(lambda: fork.pool.peer_states, 10, "the fork replicates")
    started = time.monotonic()
    # one 10 MB message, of random printable text (p2pdb peers compress their frames)
    printable = bytes(c for c in range(32, 127) if c not in b'"\\') * 3
    big = [{**d, "text": os.urandom(960).translate(printable[:256]).decode()} for d in DOCS_10K]
    await master.docs.bulk_insert(big)
    await wait_equal(master.docs, fork.docs, seconds=60)
    took = time.monotonic() - started
    codes = [getattr(e, "code", e) for e in fork.errors + master.errors]
    assert "WEBRTC_PEER_TIMEOUT" not in codes, (codes, took)
    assert fork.peer_with_token(master.db.token) == link, "the link was replaced"
    # long enough that a heartbeat queued behind the message would have timed out
    assert took > options["heartbeat_interval"] + options["heartbeat_timeout"], took
    print(f"10000 documents in one message took {took:.2f} s, no heartbeat timeout")


async def test_a_master_knows_when_it_is_in_sync_after_big_pushes(
    signaling: SignalingServer, make_node: MakeNode
) -> None:
    """Regression: a master is in sync once its last answer left the queue; nothing else
    may happen after that, so draining the queue itself must wake wait_for_in_sync()."""
    x = await make_node("x", signaling.url, batch_size=1000)
    y = await make_node("y", signaling.url, batch_size=1000)
    master, fork = (x, y) if is_master(x.db.token, y.db.token) else (y, x)
    await fork.wait(lambda: fork.pool.peer_states, 10, "the fork replicates")
    await fork.docs.bulk_insert(make_docs("pushed-", 3000, size=500))
    await wait_equal(master.docs, fork.docs, seconds=30)
    async with asyncio.timeout(10):
        await master.pool.wait_for_in_sync()
        await fork.pool.wait_for_in_sync()
