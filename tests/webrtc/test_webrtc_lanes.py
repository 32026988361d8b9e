"""Live changes overtake a bulk sync over real WebRTC (aiortc on loopback, real SQLite files),
with the checkpoints kept sound (issue 12; the rules: tests/test_lanes.py)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from replication_helpers import wait_equal
from schemas import PEER_SCHEMA as SCHEMA

import p2pdb
from p2pdb.changes import ChangeEvent
from p2pdb.plugins.replication_webrtc import (
    ReplicationPool,
    aiortc_connection_handler,
    is_master,
    replicate_webrtc,
)
from p2pdb.plugins.replication_webrtc.signaling_server import SignalingServer
from p2pdb.replication.master import parse_checkpoint

TOPIC = "p2pdb-lanes-room"
WAIT = 60.0
BULK = 1500  # ~1.5 MB: 8 stream batches of the master, 15 push batches of the fork


@pytest.fixture
async def peers(
    tmp_path: Path, signaling: SignalingServer
) -> AsyncIterator[list[tuple[p2pdb.Collection, ReplicationPool]]]:
    opened: list[tuple[p2pdb.Database, ReplicationPool]] = []
    result = []
    for name in ("a", "b"):
        db = await p2pdb.create_database(str(tmp_path / f"{name}.db"))
        todos = await db.add_collection("todos", schema=SCHEMA)
        handler = aiortc_connection_handler(
            signaling.url, ice_servers=[], host_addresses=["127.0.0.1"], engine="aiortc"
        )  # aiortc: the native engine moves the bulk too fast for anything to overtake
        pool = await replicate_webrtc(todos, TOPIC, handler)
        opened.append((db, pool))
        result.append((todos, pool))
    yield result
    for db, pool in opened:
        await pool.cancel()
        await db.close()


def first_arrival(collection: p2pdb.Collection, doc_id: str, probe: Any) -> asyncio.Future[Any]:
    """Resolves with ``probe()`` taken when ``doc_id`` is written to ``collection``."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def on_change(event: ChangeEvent) -> None:
        if event.id == doc_id and not future.done():
            future.set_result(probe())

    subscription = collection.changes.subscribe(on_change)
    future.add_done_callback(lambda _: subscription.dispose())
    return future


def text(n: int) -> str:
    # random: compressed frames (p2pdb peers' default) must not make the bulk small
    return f"{n:06}" + os.urandom(500).hex()


async def test_live_changes_overtake_a_bulk_sync_both_ways(peers: Any) -> None:
    (a, pool_a), (b, pool_b) = peers
    master, fork = (a, b) if is_master(a.database.token, b.database.token) else (b, a)
    fork_pool = pool_b if fork is b else pool_a
    await master.insert({"id": "first", "text": "before"})
    await pool_a.wait_for_first_peer()
    await wait_equal(a, b, seconds=WAIT)
    (state,) = fork_pool.peer_states.values()
    storage = fork.database.storage

    # master -> fork: a commit of 3 MB (stream batches of STREAM_BATCH_DOCS), then a live
    # change
    before = master.database.storage.last_seq("todos")

    def held() -> int:  # the bulk's documents the fork holds (they arrive in order)
        rows, _ = storage.changes_since("todos", 0, 10 * BULK)
        return sum(1 for _, doc in rows if doc["id"].startswith("m"))

    seen = first_arrival(fork, "live-down", lambda: (held(), state.down_checkpoint))
    await master.bulk_insert([{"id": f"m{i:05}", "text": text(i)} for i in range(BULK)])
    await master.insert({"id": "live-down", "text": "now"})
    async with asyncio.timeout(WAIT):
        count, checkpoint = await seen
    assert count < BULK  # the live change got there before the bulk was through
    # stored with the checkpoint of a batch sent in order before it: never past a bulk
    # document the fork does not hold (the bulk's sequence numbers follow ``before``)
    assert parse_checkpoint(checkpoint) <= before + count

    # fork -> master: thirty push batches, then a live change pushed beside them
    await wait_equal(a, b, seconds=WAIT)
    master_storage = master.database.storage
    last = f"f{BULK - 1:05}"
    pushed = first_arrival(master, "live-up", lambda: master_storage.get_one("todos", last))
    await fork.bulk_insert([{"id": f"f{i:05}", "text": text(i)} for i in range(BULK)])
    await fork.insert({"id": "live-up", "text": "now"})
    async with asyncio.timeout(WAIT):
        last_doc = await pushed
    assert last_doc is None  # the live change got there before the bulk was through
    await wait_equal(a, b, seconds=WAIT)
    await state.wait_for_in_sync()
    assert await master.count() == 2 * BULK + 3
