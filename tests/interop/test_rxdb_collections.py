"""Several p2pdb collections in one topic, with a real RxDB 17.6 peer (Node) in it.

An RxDB topic carries one collection, and which one is not on RxDB's wire: a p2pdb
database that replicates two collections in the topic an RxDB peer joins refuses it
(``WEBRTC_COLLECTIONS_AMBIGUOUS``) instead of mixing collections, whichever side initiates.
A p2pdb peer with one collection per topic replicates with RxDB as before (every other
test of this folder), and two collections each in their own topic replicate with two RxDB
peers while sharing nothing they should not.
"""

from __future__ import annotations

import asyncio
from typing import Any

from rxdb_harness import Stack

from p2pdb.errors import PeerError
from p2pdb.plugins.replication_webrtc import aiortc_connection_handler, replicate_webrtc

WAIT_MS = 20_000


def docs(prefix: str, count: int) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i:03d}", "text": prefix, "done": False, "n": i} for i in range(count)]


async def test_two_collections_in_an_rxdb_topic_refuse_the_rxdb_peer(stack: Stack) -> None:
    url = await stack.signaling("p2pdb")
    topic = stack.topic()
    rx = await stack.rxdb("rx", url, topic)
    assert await rx.call("bulkInsert", docs=docs("rx-", 20)) == 20
    py = await stack.p2pdb("py")
    other = await py.db.add_collection("other", schema=py.collection.schema.raw)
    await py.collection.bulk_insert(docs("py-", 10))
    await other.bulk_insert(docs("other-", 10))
    # as the initiator (half the runs: the peer ids decide), the refusal waits connect_timeout
    # for a proof that never comes: 5 s instead of the default 15 s (loopback connects in < 1 s)
    handler = aiortc_connection_handler(
        url, ice_servers=[], host_addresses=["127.0.0.1"], connect_timeout=5.0
    )
    errors: list[Exception] = []
    refused = asyncio.Event()

    def note(error: Exception) -> None:
        errors.append(error)
        if isinstance(error, PeerError) and error.code == "WEBRTC_COLLECTIONS_AMBIGUOUS":
            refused.set()

    pools = [
        await replicate_webrtc(py.collection, topic, handler),
        await replicate_webrtc(other, topic, handler),
    ]
    for pool in pools:
        pool.errors.subscribe(note)
    try:
        assert pools[0].connection.handler is pools[1].connection.handler
        await asyncio.wait_for(refused.wait(), 30)  # at most connect_timeout as initiator
        assert all(not pool.sessions for pool in pools)
        assert len(await py.collection.find()) == 10 and len(await other.find()) == 10
        assert await rx.call("count") == 20  # nothing of ours reached it either
    finally:
        for pool in pools:
            await pool.cancel()
