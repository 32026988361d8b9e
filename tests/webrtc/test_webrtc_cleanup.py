"""Tombstone cleanup with a real WebRTC pair (signaling on 127.0.0.1, aiortc on loopback,
SQLite files): the fork keeps a tombstone its stored replication with the peer has not
pushed, even while the pool is gone, and purges it once a new pool pushed it."""

from __future__ import annotations

from pathlib import Path

import pytest
from replication_helpers import wait_equal
from schemas import PEER_SCHEMA as SCHEMA

import p2pdb
from p2pdb.plugins.replication_webrtc import (
    ReplicationPool,
    aiortc_connection_handler,
    replicate_webrtc,
)
from p2pdb.plugins.replication_webrtc.signaling_server import SignalingServer

TOPIC = "p2pdb-cleanup-room"
pytestmark = pytest.mark.timeout(90)


async def test_cleanup_waits_for_the_webrtc_replication(
    tmp_path: Path, signaling: SignalingServer
) -> None:
    def handler() -> object:
        return aiortc_connection_handler(
            signaling.url, ice_servers=[], host_addresses=["127.0.0.1"]
        )

    dbs = [await p2pdb.create_database(str(tmp_path / f"{n}.db")) for n in ("a", "b")]
    a, b = [await db.add_collection("todos", schema=SCHEMA) for db in dbs]
    pools: list[ReplicationPool] = [
        await replicate_webrtc(c, TOPIC, handler())
        for c in (a, b)  # type: ignore[arg-type]
    ]
    try:
        await a.insert({"id": "x", "text": "shared"})
        await wait_equal(a, b, seconds=30)
        for pool in pools:
            await pool.wait_for_in_sync(peers=1, timeout=30)
        # the fork of the pair is the side that runs a replication (peer_states)
        fork_index = 0 if pools[0].peer_states else 1
        fork, master = (a, b) if fork_index == 0 else (b, a)
        await pools[fork_index].cancel()  # its replication state stays in the file
        await fork.remove_document("x")
        assert await fork.cleanup(min_age=0) == 0  # the peer still holds "x"
        assert await master.find_one("x") is not None
        pools[fork_index] = await replicate_webrtc(fork, TOPIC, handler())  # type: ignore[arg-type]
        await wait_equal(a, b, seconds=30)  # the deletion reached the master
        await pools[fork_index].wait_for_in_sync(peers=1, timeout=30)
        assert master.stored_state("x")["_deleted"] is True  # type: ignore[index]
        assert await fork.cleanup(min_age=0) == 1
        assert fork.stored_state("x") is None
        await fork.insert({"id": "x", "text": "new again"})  # a purged id, inserted anew
        await wait_equal(a, b, seconds=30)
        assert (await master.find_one("x"))["text"] == "new again"  # type: ignore[index]
    finally:
        for pool in pools:
            await pool.cancel()
        for db in dbs:
            await db.close()
