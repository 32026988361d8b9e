"""Partial replication and per-peer access rules over real WebRTC: a signaling server on
127.0.0.1, aiortc on loopback, real SQLite files. Both peers set the same rules, so they hold
whichever role the election gives each side (the rules apply as master and as fork)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from replication_helpers import contents
from schemas import PEER_SCHEMA as SCHEMA

import p2pdb
from p2pdb.plugins.replication_webrtc import (
    Peer,
    ReplicationPool,
    aiortc_connection_handler,
    replicate_webrtc,
)
from p2pdb.plugins.replication_webrtc.signaling_server import SignalingServer

TOPIC = "p2pdb-access-room"
SHARED = {"n": {"$lt": 100}}

MakePeer = Callable[..., Any]


@pytest.fixture
async def make_peer(tmp_path: Path, signaling: SignalingServer) -> AsyncIterator[MakePeer]:
    opened: list[tuple[p2pdb.Database, ReplicationPool]] = []

    async def make(name: str, **options: Any) -> tuple[p2pdb.Collection, ReplicationPool]:
        db = await p2pdb.create_database(str(tmp_path / f"{name}.db"))
        todos = await db.add_collection("todos", schema=SCHEMA)
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


async def wait_holds(collection: p2pdb.Collection, ids: set[str], seconds: float = 45.0) -> None:
    """Wait until ``collection`` holds every id of ``ids`` (checked after each commit)."""
    changed = asyncio.Event()
    sub = collection.changes.subscribe(lambda _e: changed.set())
    try:
        async with asyncio.timeout(seconds):
            while True:
                changed.clear()  # before reading: a commit during the read sets it again
                if ids <= set(await contents(collection)):
                    return
                await changed.wait()
    finally:
        sub.dispose()


def todo(doc_id: str, text: str, n: int) -> dict[str, Any]:
    return {"id": doc_id, "text": text, "n": n}


async def test_a_selector_keeps_documents_outside_it_on_their_peer(make_peer: MakePeer) -> None:
    a, pool_a = await make_peer("a", selector=SHARED)
    b, pool_b = await make_peer("b", selector=SHARED)
    await a.bulk_insert([todo(f"a{i}", "shared", i) for i in range(5)])
    await a.bulk_insert([todo(f"p{i}", "a's own", 500 + i) for i in range(3)])
    await b.bulk_insert([todo(f"b{i}", "shared", i) for i in range(3)] + [todo("q0", "b's", 900)])
    await wait_holds(a, {"b0", "b1", "b2"})
    await wait_holds(b, {f"a{i}" for i in range(5)})
    # a shared document and, after it, a private one: the first arrives, so the second was
    # passed over (a stream batch carries both in order)
    await a.insert(todo("p9", "a's own, later", 999))
    await a.insert(todo("a9", "shared, later", 9))
    await wait_holds(b, {"a9"})
    await pool_a.wait_for_in_sync(timeout=20)
    await pool_b.wait_for_in_sync(timeout=20)
    shared = {"a0", "a1", "a2", "a3", "a4", "a9", "b0", "b1", "b2"}
    assert set(await contents(a)) == shared | {"p0", "p1", "p2", "p9"}
    assert set(await contents(b)) == shared | {"q0"}


async def test_can_read_and_can_write_bind_to_the_peer(make_peer: MakePeer) -> None:
    seen_keys: set[str | None] = set()

    def can_read(peer: Peer, doc: dict[str, Any]) -> bool:
        seen_keys.add(peer.fingerprint)
        return not str(doc.get("text", "")).startswith("private")

    async def can_write(peer: Peer, current: dict[str, Any] | None, new: dict[str, Any]) -> bool:
        return new.get("text") != "forged" and not new.get("_deleted", False)

    a, pool_a = await make_peer("a", can_read=can_read, can_write=can_write)
    b, pool_b = await make_peer("b", can_read=can_read, can_write=can_write)
    refused: list[p2pdb.P2PDBError] = []
    for pool in (pool_a, pool_b):
        pool.errors.subscribe(refused.append)
    await a.bulk_insert([todo("a0", "hello", 1), todo("a-private", "private: a", 2)])
    await b.bulk_insert([todo("b0", "hi", 1), todo("b-private", "private: b", 2)])
    await wait_holds(a, {"b0"})
    await wait_holds(b, {"a0"})
    # a forged write and a deletion from either side never land on the other
    await b.insert(todo("b-forged", "forged", 3))
    await (await b.find_one("b0")).remove()  # type: ignore[union-attr]
    await b.insert(todo("b1", "after the refused ones", 4))
    await wait_holds(a, {"b1"})
    await pool_a.wait_for_in_sync(timeout=20)
    on_a = await contents(a)
    on_b = await contents(b)
    assert "b-private" not in on_a and "a-private" not in on_b
    assert "b-forged" not in on_a
    assert "b0" in on_a  # its deletion was refused
    assert on_a["b1"]["text"] == "after the refused ones"
    assert any(e.code == "REPLICATION_WRITE_REFUSED" or "REFUSED" in str(e) for e in refused)
    # the hooks saw the verified key of the other side (the handshake ran first)
    assert seen_keys and None not in seen_keys
