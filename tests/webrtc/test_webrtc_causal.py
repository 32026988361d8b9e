"""Causal vectors over WebRTC: they travel between p2pdb peers that proved their keys, and
not otherwise (RxDB peers, and p2pdb peers with ``authenticate=False``, keep the plain
protocol). Real parts: SQLite files, the signaling server, aiortc on loopback."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from schemas import PEER_SCHEMA as SCHEMA

import p2pdb
from p2pdb.causal import state_vector
from p2pdb.plugins.replication_webrtc import aiortc_connection_handler, replicate_webrtc
from p2pdb.plugins.replication_webrtc.signaling_server import SignalingServer

TOPIC = "p2pdb-causal-room"
WAIT = 20.0


async def vector_of(db: p2pdb.Database, doc_id: str) -> Any:
    doc = await db.collections["docs"].find_one(doc_id)
    assert doc is not None
    return state_vector(doc.to_dict(include_meta=True))


async def pair(tmp_path: Path, url: str, **options: Any) -> list[p2pdb.Database]:
    dbs = [await p2pdb.create_database(str(tmp_path / f"{n}.db")) for n in "ab"]
    for db in dbs:
        await db.add_collection("docs", schema=SCHEMA)
    await dbs[0].collections["docs"].insert({"id": "x", "text": "from a"})
    pools = []
    for db in dbs:
        handler = aiortc_connection_handler(url, ice_servers=[], host_addresses=["127.0.0.1"])
        pools.append(await replicate_webrtc(db.collections["docs"], TOPIC, handler, **options))
    async with asyncio.timeout(WAIT):
        for pool in pools:
            await pool.wait_for_in_sync(peers=1, timeout=WAIT)
        while await dbs[1].collections["docs"].find_one("x") is None:
            await pools[1].wait_for_change()
    return dbs


async def test_proven_p2pdb_peers_carry_the_states_history(
    tmp_path: Path, signaling: SignalingServer
) -> None:
    dbs = await pair(tmp_path, signaling.url)
    try:
        written = await vector_of(dbs[0], "x")
        assert written is not None and list(written) == [dbs[0].storage.token]
        # b stored a's state with a's history: a copy, not a write of its own
        assert await vector_of(dbs[1], "x") == written
    finally:
        for db in dbs:
            await db.close()


async def test_without_the_handshake_vectors_stay_home(
    tmp_path: Path, signaling: SignalingServer
) -> None:
    dbs = await pair(tmp_path, signaling.url, authenticate=False)
    try:
        written = await vector_of(dbs[0], "x")
        # nothing came with the state: b counts it as a write of its own
        assert list(await vector_of(dbs[1], "x")) == [dbs[1].storage.token]
        assert written is not None and list(written) == [dbs[0].storage.token]
    finally:
        for db in dbs:
            await db.close()
