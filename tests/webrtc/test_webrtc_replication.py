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
from p2pdb.conflicts import Conflict
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


async def test_two_peers_insert_update_delete_both_ways(make_peer: MakePeer) -> None:
    a, pool_a = await make_peer("a")
    b, pool_b = await make_peer("b")
    await a.insert({"id": "from-a", "text": "hello"})
    await b.insert({"id": "from-b", "text": "hi"})
    await pool_a.wait_for_first_peer()
    await wait_equal(a, b)
    doc = await b.find_one("from-a")
    assert doc is not None
    await doc.patch({"text": "edited on b"})
    await (await a.find_one("from-b")).patch({"text": "edited on a"})  # type: ignore[union-attr]
    await wait_equal(a, b)
    await (await a.find_one("from-a")).remove()  # type: ignore[union-attr]
    await wait_equal(a, b)
    assert sorted(await contents(b)) == ["from-b"]
    assert (await b.find_one("from-b"))["text"] == "edited on a"  # type: ignore[index]
    await pool_a.wait_for_in_sync()
    await pool_b.wait_for_in_sync()
    # exactly one side of the pair runs a fork replication
    assert len(pool_a.peer_states) + len(pool_b.peer_states) == 1


async def test_late_joiner_catches_up_in_a_mesh(make_peer: MakePeer) -> None:
    a, _ = await make_peer("a")
    b, _ = await make_peer("b")
    await a.bulk_insert([{"id": f"a{i}", "text": "x", "n": i} for i in range(300)])
    await wait_equal(a, b)
    c, pool_c = await make_peer("c")
    await c.insert({"id": "from-c", "text": "late"})
    await wait_equal(a, b, c)
    assert await c.count() == 301


def merge(conflict: Conflict) -> dict[str, Any]:
    texts = sorted({conflict.real_master_state["text"], conflict.new_document_state["text"]})
    return {**conflict.real_master_state, "text": "+".join(texts)}


async def test_concurrent_edits_converge_through_the_handler(make_peer: MakePeer) -> None:
    a, pool_a = await make_peer("a", merge)
    b, pool_b = await make_peer("b", merge)
    await a.insert({"id": "doc", "text": "base"})
    await wait_equal(a, b)
    await pool_a.wait_for_in_sync()
    await pool_b.wait_for_in_sync()
    for state in [*pool_a.peer_states.values(), *pool_b.peer_states.values()]:
        await state.pause()  # the fork goes offline; both sides edit
    await (await a.find_one("doc")).patch({"text": "A"})  # type: ignore[union-attr]
    await (await b.find_one("doc")).patch({"text": "B"})  # type: ignore[union-attr]
    for state in [*pool_a.peer_states.values(), *pool_b.peer_states.values()]:
        await state.start()
    await wait_equal(a, b)
    assert (await a.find_one("doc"))["text"] == "A+B"  # type: ignore[index]


async def test_is_peer_valid_refuses_a_peer(make_peer: MakePeer) -> None:
    a, pool_a = await make_peer("a", is_peer_valid=lambda peer: False)
    b, pool_b = await make_peer("b")
    await a.insert({"id": "secret", "text": "not for b"})
    await b.insert({"id": "pushy", "text": "not for a"})
    await pool_a.wait_for_in_sync()  # a decided: b is invalid, nothing to do
    assert list(await contents(a)) == ["secret"] and list(await contents(b)) == ["pushy"]
    assert pool_a.peer_states == {}
