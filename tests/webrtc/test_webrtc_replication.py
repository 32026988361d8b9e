"""replicate_webrtc through real parts: a signaling server over WebSockets on 127.0.0.1,
aiortc peer connections on loopback, and real SQLite files."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from replication_helpers import contents, wait_equal
from schemas import PEER_SCHEMA as SCHEMA

import p2pdb
from p2pdb.plugins.replication_webrtc import (
    ReplicationPool,
    aiortc_connection_handler,
    is_master,
    replicate_webrtc,
)
from p2pdb.plugins.replication_webrtc.signaling_server import SignalingServer

TOPIC = "p2pdb-test-room"

Peer = tuple[p2pdb.Collection, ReplicationPool]
MakePeer = Callable[..., Any]


@pytest.fixture
async def make_peer(tmp_path: Path, signaling: SignalingServer) -> AsyncIterator[MakePeer]:
    """``await make_peer(name, **pool_options)``: a database file, a collection and a pool."""
    opened: list[tuple[p2pdb.Database, ReplicationPool]] = []

    async def make(name: str, conflict_handler: object = None, **options: Any) -> Peer:
        db = await p2pdb.create_database(str(tmp_path / f"{name}.db"))
        todos = await db.add_collection("todos", schema=SCHEMA, conflict_handler=conflict_handler)
        handler = aiortc_connection_handler(
            signaling.url, ice_servers=[], host_addresses=["127.0.0.1"]
        )
        pool = await replicate_webrtc(todos, TOPIC, handler, **options)
        opened.append((db, pool))
        return todos, pool

    yield make
    for db, pool in opened:
        await pool.cancel()
        await db.close()


def test_exactly_one_master_per_pair() -> None:
    import random
    import string

    rng = random.Random(7)
    for _ in range(200):
        a, b = ("".join(rng.choices(string.ascii_lowercase, k=10)) for _ in range(2))
        assert is_master(a, b) != is_master(b, a)


async def test_exactly_one_side_of_a_pair_is_the_fork(make_peer: MakePeer) -> None:
    # documents both ways, conflicts, resume, RESYNC, hostile answers over WebRTC:
    # tests/conformance (the webrtc transport); this checks the role election itself
    a, pool_a = await make_peer("a")
    b, pool_b = await make_peer("b")
    await a.insert({"id": "from-a", "text": "hello"})
    await b.insert({"id": "from-b", "text": "hi"})
    await pool_a.wait_for_first_peer()
    await wait_equal(a, b)
    await pool_a.wait_for_in_sync()
    await pool_b.wait_for_in_sync()
    a_leads = is_master(a.database.token, b.database.token)
    assert len(pool_a.peer_states) == (0 if a_leads else 1)
    assert len(pool_b.peer_states) == (1 if a_leads else 0)


async def test_late_joiner_catches_up_in_a_mesh(make_peer: MakePeer) -> None:
    a, _ = await make_peer("a")
    b, _ = await make_peer("b")
    await a.bulk_insert([{"id": f"a{i}", "text": "x", "n": i} for i in range(300)])
    await wait_equal(a, b)
    c, pool_c = await make_peer("c")
    await c.insert({"id": "from-c", "text": "late"})
    await wait_equal(a, b, c)
    assert await c.count() == 301


async def test_is_peer_valid_refuses_a_peer(make_peer: MakePeer) -> None:
    a, pool_a = await make_peer("a", is_peer_valid=lambda peer: False)
    b, pool_b = await make_peer("b")
    await a.insert({"id": "secret", "text": "not for b"})
    await b.insert({"id": "pushy", "text": "not for a"})
    await pool_a.wait_for_in_sync()  # a decided: b is invalid, nothing to do
    assert list(await contents(a)) == ["secret"] and list(await contents(b)) == ["pushy"]
    assert pool_a.peer_states == {}
