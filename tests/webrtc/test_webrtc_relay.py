"""Replication through a real TURN relay (coturn on 127.0.0.1), with real pools.

Both pools use ``relay_only=True``: no host candidate is gathered, so every byte goes
through coturn. A missing ``turnserver`` fails these tests (no skip); a wrong credential
ends in a clear, typed error within the connect timeout instead of a hang.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from replication_helpers import contents, wait_equal
from turn_helpers import TURN_PASSWORD, TURN_USER, running_turnserver

import p2pdb
from p2pdb.errors import P2PDBError
from p2pdb.plugins.replication_webrtc import (
    ConnectionOptions,
    ReplicationPool,
    aiortc_connection_handler,
    replicate_webrtc,
)
from p2pdb.plugins.replication_webrtc.signaling_server import SignalingServer

TOPIC = "p2pdb-relay-room"
SCHEMA = {
    "version": 0,
    "primaryKey": "id",
    "type": "object",
    "properties": {
        "id": {"type": "string", "maxLength": 64},
        "text": {"type": "string"},
    },
    "required": ["id", "text"],
}

Node = tuple[p2pdb.Collection, ReplicationPool]
MakeNode = Callable[..., Any]


@pytest.fixture
def turn_server(tmp_path: Path) -> Iterator[str]:
    with running_turnserver(tmp_path) as url:
        yield url


@pytest.fixture
async def make_node(
    turn_server: str, tmp_path: Path, signaling: SignalingServer
) -> AsyncIterator[MakeNode]:
    """``await make_node(name, username=..., credential=..., connect_timeout=...)``: a pool
    that connects through the TURN server only. Depends on ``turn_server`` so the server
    stops after the pools closed (closing deletes the TURN allocations)."""
    made: list[tuple[p2pdb.Database, ReplicationPool]] = []

    async def make(
        name: str,
        username: str = TURN_USER,
        credential: str = TURN_PASSWORD,
        connect_timeout: float = 15.0,
    ) -> Node:
        db = await p2pdb.create_database(str(tmp_path / f"{name}.db"))
        docs = await db.add_collection("docs", schema=SCHEMA)
        ice = [{"urls": turn_server, "username": username, "credential": credential}]
        # the settings as one object (the keywords are the same path: test_webrtc_options)
        options = ConnectionOptions(
            ice_servers=ice, relay_only=True, connect_timeout=connect_timeout
        )
        handler = aiortc_connection_handler(signaling.url, options=options)
        pool = await replicate_webrtc(docs, TOPIC, handler)
        made.append((db, pool))
        return docs, pool

    yield make
    for db, pool in made:
        await pool.cancel()
        await db.close()


async def test_pools_replicate_through_the_relay(make_node: MakeNode) -> None:
    a, pool_a = await make_node("a")
    b, pool_b = await make_node("b")
    await a.insert({"id": "one", "text": "inserted on a"})
    await b.bulk_insert([{"id": f"b-{i}", "text": "ü€😀" * 50} for i in range(300)])
    peer_b = await pool_a.wait_for_first_peer()
    peer_a = await pool_b.wait_for_first_peer()
    # every byte goes through coturn: both selected candidates are relay candidates
    assert pool_a.connection.candidate_pair(peer_b) == ("relay", "relay")
    assert pool_b.connection.candidate_pair(peer_a) == ("relay", "relay")
    await wait_equal(a, b, seconds=30)

    await (await b.find_one("one")).patch({"text": "updated on b"})  # type: ignore[union-attr]
    await wait_equal(a, b)
    assert (await a.find_one("one"))["text"] == "updated on b"  # type: ignore[index]
    await (await a.find_one("b-7")).remove()  # type: ignore[union-attr]
    await wait_equal(a, b)
    assert await b.find_one("b-7") is None
    assert len(await contents(b)) == 300
    await pool_a.wait_for_in_sync()
    await pool_b.wait_for_in_sync()


async def test_a_wrong_turn_credential_is_a_clear_error_not_a_hang(
    make_node: MakeNode,
) -> None:
    connect_timeout = 3.0
    errors: asyncio.Queue[Exception] = asyncio.Queue()
    a, pool_a = await make_node("a", credential="wrong-password", connect_timeout=connect_timeout)
    pool_a.errors.subscribe(errors.put_nowait)
    started = time.monotonic()
    b, pool_b = await make_node("b", credential="wrong-password", connect_timeout=connect_timeout)
    pool_b.errors.subscribe(errors.put_nowait)
    async with asyncio.timeout(connect_timeout + 5):
        error = await errors.get()
    elapsed = time.monotonic() - started
    assert isinstance(error, P2PDBError), error
    assert error.code == "WEBRTC_TURN_FAILED", error
    assert "TURN" in error.message and "credential" in error.message, error.message
    assert "wrong-password" not in error.message  # never echo the secret
    assert elapsed < connect_timeout + 5
    assert not pool_a.sessions and not pool_b.sessions  # nothing connected, nothing stuck
    print(f"{error.code} after {elapsed:.2f} s: {error.message}")
